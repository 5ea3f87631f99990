"""llamarec pipeline"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import settings
from .options import Device, Json, Workdir
from .output import print_json, stderr

EPILOG = (
    "Examples:  llamarec pipeline   (ml-100k, smollm2-135m, about 10 minutes on 2 CPU cores)   ·   "
    "llamarec pipeline ml-100k --train-examples 1024 --retriever-epochs 60   ·   "
    "llamarec pipeline beauty --model meta-llama/Llama-2-7b-hf --device cuda"
)


def _budget(help: str, name: str):
    return typer.Option(name, help=help, rich_help_panel="Budget")


def pipeline(
    dataset: Annotated[str, typer.Argument(help="Dataset name.")] = "ml-100k",
    model: Annotated[str, typer.Option("--model", help="Ranker base model: alias, hub id or path.")] = "smollm2-135m",
    retriever_epochs: Annotated[int, _budget("Most LRURec epochs.", "--retriever-epochs")] = 20,
    train_examples: Annotated[int, _budget("Ranker training examples.", "--train-examples")] = 128,
    val_examples: Annotated[
        int, _budget("Validation users ranked per validation (early stopping and fusion's α).", "--val-examples")
    ] = 128,
    eval_every: Annotated[int, _budget("Validate the ranker every N steps.", "--eval-every")] = 16,
    batch_size: Annotated[int, _budget("Ranker examples per step.", "--batch-size")] = 4,
    lr: Annotated[float, _budget("Ranker learning rate.", "--lr")] = 5e-4,
    negatives: Annotated[
        str, _budget("Training candidates: the retriever's own (retrieved) or random.", "--negatives")
    ] = "retrieved",
    test_examples: Annotated[
        int | None, _budget("Rank a sample of this many test users [default: all].", "--test-examples")
    ] = None,
    raw_dir: Annotated[
        Path | None,
        typer.Option("--raw-dir", envvar="LLAMAREC_RAW_DIR", show_envvar=True, help="Folder with the raw files."),
    ] = None,
    device: Device = "auto",
    workdir: Workdir = None,
    json_output: Json = False,
) -> None:
    """Run every stage on a CPU-sized budget and print the metrics; run again to continue after an interruption."""
    from ..pipeline import Budget, run_pipeline
    from ..ranking.train import RANKER_EARLY_STOP_METRIC
    from .evaluate_command import print_report
    from .progress import RichReporter

    budget = Budget(
        retriever_epochs=retriever_epochs,
        train_examples=train_examples,
        val_examples=val_examples,
        eval_every=eval_every,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=min(4, train_examples // max(batch_size, 1)),  # batch size 0 is refused later, in one line
        negatives=negatives,
        test_examples=test_examples,
    )
    try:
        report = run_pipeline(
            dataset,
            workdir=settings.workdir(workdir),
            model=model,
            budget=budget,
            raw_dir=settings.raw_dir(raw_dir),
            device=device,
            log=lambda message: stderr.print(
                message, style="bold" if message[1] == "/" else "dim", highlight=False, soft_wrap=True
            ),
            reporter=None if json_output else RichReporter(1, metric=RANKER_EARLY_STOP_METRIC),
            retriever_reporter=None if json_output else RichReporter,
        )
    except KeyboardInterrupt:
        stderr.print("Interrupted. Run the same command again to continue where it stopped.")
        raise typer.Exit(130) from None
    if json_output:
        print_json(report)
        return
    print_report(report)
    stderr.print(f"Report: {report['report_files'][1]}")


def install(cli: typer.Typer) -> None:
    cli.command("pipeline", epilog=EPILOG)(pipeline)
