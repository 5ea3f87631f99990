"""llamarec rank-train"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import settings
from .options import DatasetName, Device, Json, TemplatesDir, TrustRemoteCode, Workdir
from .output import print_json, stderr, stdout
from .retrieve_train_command import config_table

EPILOG = (
    "Examples:  llamarec rank-train ml-100k --model smollm2-135m --max-train-examples 512   ·   "
    "llamarec rank-train beauty (Llama 2 7B, QLoRA on CUDA)   ·   "
    "llamarec rank-train games --negatives retrieved   ·   "
    "accelerate launch -m llamarec_cli rank-train beauty (several GPUs)"
)


def _flag(help: str, name: str):
    return typer.Option(name, help=help, show_default=False)


def resolve_ranker_config(dataset: str, flags: dict):
    """Config defaults < the dataset's suggestions (batch size) < the user's flags."""
    from .. import plugins
    from ..ranking.config import RankerConfig
    from ..retrieval.contract import build_config

    registry = plugins.datasets()
    dataset_defaults = dict(registry.get(dataset).ranking_defaults) if dataset in registry else {}
    return build_config(RankerConfig, [("dataset", dataset_defaults), ("flag", flags)])


def rank_train(
    dataset: DatasetName,
    model: Annotated[str | None, _flag("Hub id, local directory or alias [default: Llama 2 7B].", "--model")] = None,
    template: Annotated[str | None, _flag("Prompt template name or .toml path.", "--template")] = None,
    templates_dir: TemplatesDir = None,
    retriever: Annotated[str | None, _flag("Whose candidates to rank [default: lrurec].", "--retriever")] = None,
    quantization: Annotated[str | None, _flag("4bit, 8bit, none or auto.", "--quantization")] = None,
    dtype: Annotated[str | None, _flag("bf16, fp16, fp32 or auto.", "--dtype")] = None,
    negatives: Annotated[str | None, _flag("random (the paper) or retrieved.", "--negatives")] = None,
    max_train_examples: Annotated[
        int | None, _flag("Train on this many sampled examples [default: all].", "--max-train-examples")
    ] = None,
    max_val_examples: Annotated[
        int | None, _flag("Validate on this many sampled users [default: all].", "--max-val-examples")
    ] = None,
    batch_size: Annotated[int | None, _flag("Examples per step [default: per dataset].", "--batch-size")] = None,
    lr: Annotated[float | None, _flag("Peak learning rate [default: 1e-4].", "--lr")] = None,
    warmup_steps: Annotated[int | None, _flag("Warm-up steps [default: 100].", "--warmup-steps")] = None,
    epochs: Annotated[int | None, _flag("Epochs [default: 1].", "--epochs")] = None,
    eval_every: Annotated[int | None, _flag("Validate every N steps [default: 100].", "--eval-every")] = None,
    patience: Annotated[int | None, _flag("Early-stop patience in validations [default: 20].", "--patience")] = None,
    lora_r: Annotated[int | None, _flag("LoRA rank [default: 8].", "--lora-r")] = None,
    lora_target: Annotated[str | None, _flag("Modules to adapt, comma-separated.", "--lora-target")] = None,
    seed: Annotated[int | None, _flag("Random seed [default: 42].", "--seed")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Any other setting of the ranker config, as KEY=VALUE.")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Name of this ranker in the work directory.")] = "default",
    show_config: Annotated[
        bool, typer.Option("--show-config", help="Print the effective config with each value's origin and exit.")
    ] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last state.")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an interrupted run and start afresh.")] = False,
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    workdir: Workdir = None,
    json_output: Json = False,
) -> None:
    """Fine-tune the LLM ranker with (Q)LoRA on the retriever's candidates; keep the best adapter (PEFT format)."""
    from ..ranking.config import RankerConfig
    from ..ranking.train import (
        RANKER_EARLY_STOP_METRIC,
        STATE_FILE,
        rank_train_command,
        ranker_dir,
        resumed_config,
        train_ranker,
    )
    from ..retrieval.contract import parse_sets
    from .progress import RichReporter

    given = dict(
        model=model,
        template=template,
        retriever=retriever,
        quantization=quantization,
        dtype=dtype,
        negatives=negatives,
        max_train_examples=max_train_examples,
        max_val_examples=max_val_examples,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        epochs=epochs,
        eval_every=eval_every,
        patience=patience,
        lora_r=lora_r,
        lora_target=lora_target,
        seed=seed,
    )
    flags = {key: value for key, value in given.items() if value is not None}
    flags |= parse_sets(RankerConfig, set_ or [])
    if resume:  # the interrupted run's config, as retrieve-train --resume does: no flag needs repeating
        config, sources = resumed_config(settings.workdir(workdir), dataset, name, flags)
    else:
        config, sources = resolve_ranker_config(dataset, flags)
    if show_config:
        stdout.print(config_table("ranker", config, sources, with_help=True))
        return
    if not json_output:
        stdout.print(config_table("ranker", config, sources, with_help=False))
    reporter = RichReporter(config.epochs, metric=RANKER_EARLY_STOP_METRIC) if not json_output else None
    try:
        manifest = train_ranker(
            dataset,
            workdir=settings.workdir(workdir),
            config=config,
            name=name,
            device=device,
            resume=resume,
            restart=restart,
            templates_dir=templates_dir,
            trust_remote_code=trust_remote_code,
            reporter=reporter,
        )
    except KeyboardInterrupt:
        state = ranker_dir(settings.workdir(workdir), dataset, f".{name}.partial") / "training" / STATE_FILE
        if state.is_file():
            stderr.print(
                f"Interrupted. Continue from the last validation with: {rank_train_command(dataset, name)} --resume"
            )
        else:
            stderr.print("Interrupted before the first validation: nothing to resume; rerun the same command.")
        raise typer.Exit(130) from None
    if json_output:
        print_json(manifest)
        return
    metrics = manifest["val_metrics"]
    stderr.print(
        f"{manifest['steps']:,} steps on {manifest['train_examples']:,} examples, best at step "
        f"{manifest['best_step']:,}: validation subset NDCG@10 {metrics.get('NDCG@10', 0):.4f}, "
        f"Recall@10 {metrics.get('Recall@10', 0):.4f} (the retriever's order of the same users: NDCG@10 "
        f"{manifest['val_retriever_metrics']['NDCG@10']:.4f}). Adapter: "
        f"{Path(settings.workdir(workdir)) / dataset / 'ranker' / name / 'adapter'}"
    )


def install(cli: typer.Typer) -> None:
    cli.command("rank-train", epilog=EPILOG)(rank_train)
