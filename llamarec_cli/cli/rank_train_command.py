"""llamarec rank-train"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import settings
from ..ranking.config import RankerConfig, resolve_ranker_config
from .config_flags import config_flags
from .options import DatasetName, Device, Json, TemplatesDir, TrustRemoteCode, Workdir
from .output import print_json, stderr, stdout
from .retrieve_train_command import config_table, print_config

EPILOG = (
    "Examples:  llamarec rank-train ml-100k --model smollm2-135m --max-train-examples 512   ·   "
    "llamarec rank-train beauty (Llama 2 7B, QLoRA on CUDA)   ·   "
    "llamarec rank-train games --negatives retrieved   ·   "
    "accelerate launch -m llamarec_cli rank-train beauty (several GPUs)"
)


@config_flags(
    RankerConfig,
    ["model", "template", "retriever", "quantization", "dtype", "negatives", "max_train_examples",
     "max_val_examples", "batch_size", "lr", "warmup_steps", "epochs", "eval_every", "patience", "lora_r",
     "lora_target", "seed"],
    defaults={"batch_size": "per dataset"},
)  # fmt: skip
def rank_train(
    dataset: DatasetName,
    flags: dict,
    templates_dir: TemplatesDir = None,
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
    from ..config import check_resume_restart, parse_sets, with_sets
    from ..ranking.templates import load_template
    from ..stages.rank_train import RANKER_EARLY_STOP_METRIC, ranker_dir, resumed_config, train_ranker
    from ..stages.retrieve_train import retriever_class
    from ..training import resolve_device
    from .progress import RichReporter

    flags = with_sets(flags, parse_sets(RankerConfig, set_ or []))
    check_resume_restart(resume, restart)
    if resume:  # the interrupted run's config, as retrieve-train --resume does: no flag needs repeating
        config, sources = resumed_config(settings.workdir(workdir), dataset, name, flags)
    else:
        config, sources = resolve_ranker_config(dataset, flags)
    # what the run would refuse is refused before anything else, --show-config included
    load_template(config.template, templates_dir)
    ranker_dir(settings.workdir(workdir), dataset, name)  # a name that is a path, or none, is refused
    retriever_class(config.retriever)
    resolve_device(device)
    if show_config:
        print_config("ranker", config, sources, json_output)
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
        _interrupted(settings.workdir(workdir), dataset, name)
        raise typer.Exit(130) from None
    if json_output:
        print_json(manifest)
    else:
        stderr.print(summary(manifest, ranker_dir(settings.workdir(workdir), dataset, name) / "adapter"))


def _interrupted(workdir: Path, dataset: str, name: str) -> None:
    from ..layout import Workdir
    from ..stages.rank_train import rank_train_command, ranker_dir

    if Workdir(workdir).resumable(ranker_dir(workdir, dataset, name)):
        rerun = rank_train_command(dataset, name, workdir)
        stderr.print(f"Interrupted. Continue from the last validation with: {rerun} --resume")
    else:
        stderr.print("Interrupted before the first validation: nothing to resume; rerun the same command.")


def summary(manifest: dict, adapter: Path) -> str:
    """The line a finished rank-train ends with: its validation against the retriever's order of the same users."""
    metrics = manifest["val_metrics"]
    return (
        f"{manifest['steps']:,} steps on {manifest['train_examples']:,} examples, best at step "
        f"{manifest['best_step']:,}: validation subset NDCG@10 {metrics.get('NDCG@10', 0):.4f}, "
        f"Recall@10 {metrics.get('Recall@10', 0):.4f} (the retriever's order of the same users: NDCG@10 "
        f"{manifest['val_retriever_metrics']['NDCG@10']:.4f}). Adapter: {adapter}"
    )


def install(cli: typer.Typer) -> None:
    cli.command("rank-train", epilog=EPILOG)(rank_train)
