"""llamarec pipeline"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import settings
from ..stages.pipeline import Budget
from .config_flags import config_flags
from .options import Device, Json, Workdir, path
from .output import print_json, stderr

EPILOG = (
    "Examples:  llamarec pipeline   (ml-100k, smollm2-135m, about 5 minutes on 2 CPU cores)   ·   "
    "llamarec pipeline ml-100k --train-examples 1024 --retriever-epochs 60   ·   "
    "llamarec pipeline beauty --model meta-llama/Llama-2-7b-hf --device cuda"
)


@config_flags(
    Budget,
    ["retriever_epochs", "train_examples", "val_examples", "eval_every", "batch_size", "lr", "negatives",
     "test_examples"],
    defaults={"test_examples": "all"},
    panel="Budget",
)  # fmt: skip
def pipeline(
    flags: dict,
    dataset: Annotated[str, typer.Argument(help="Dataset name.")] = "ml-100k",
    model: Annotated[str, typer.Option("--model", help="Ranker base model: alias, hub id or path.")] = "smollm2-135m",
    raw_dir: Annotated[
        Path | None,
        typer.Option(
            "--raw-dir", parser=path, envvar="LLAMAREC_RAW_DIR", show_envvar=True, help="Folder with the raw files."
        ),
    ] = None,
    device: Device = "auto",
    workdir: Workdir = None,
    json_output: Json = False,
) -> None:
    """Run every stage on a CPU-sized budget and print the metrics; run again to continue after an interruption."""
    from ..stages.pipeline import run_pipeline
    from ..stages.rank_train import RANKER_EARLY_STOP_METRIC
    from .evaluate_command import print_report
    from .progress import RichReporter

    budget = Budget(**flags)
    # few steps, little warm-up (a batch size of 0 is refused later, in one line)
    budget.warmup_steps = min(budget.warmup_steps, budget.train_examples // max(budget.batch_size, 1))
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
        stderr.print(
            "Interrupted. Run the same command again: finished stages are reused and an interrupted training "
            "continues from its last validation (steps since then are done again; one stopped before its first "
            "validation starts over)."
        )
        raise typer.Exit(130) from None
    if json_output:
        print_json(report)
        return
    print_report(report)
    stderr.print(f"Report: {report['report_files'][1]}")


def install(cli: typer.Typer) -> None:
    cli.command("pipeline", epilog=EPILOG)(pipeline)
