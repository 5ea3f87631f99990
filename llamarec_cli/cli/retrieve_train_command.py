"""llamarec retrieve-train"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import settings
from ..config import RetrieverConfig
from ..workspace import main_process
from .config_flags import config_flags
from .options import DatasetName, Device, Json, RetrieverName, Workdir
from .output import metrics_table, print_json, stderr, stdout

EPILOG = (
    "Examples:  llamarec retrieve-train ml-100k   ·   llamarec retrieve-train beauty --dropout 0.3 --device cuda   ·   "
    "llamarec retrieve-train games --retriever sasrec --set heads=4   ·   llamarec retrieve-train ml-100k --resume"
)


@config_flags(
    RetrieverConfig,
    [
        "seed",
        "batch_size",
        "max_len",
        "lr",
        "weight_decay",
        "clip",
        "val_every",
        "patience",
        "max_epochs",
        "loss",
        "uniform_negatives",
    ],
    defaults={"batch_size": "per dataset", "max_len": "per dataset"},
)
def retrieve_train(
    dataset: DatasetName,
    flags: dict,
    retriever: RetrieverName = "lrurec",
    workdir: Workdir = None,
    device: Device = "auto",
    dropout: Annotated[
        float | None, typer.Option("--dropout", help="Dropout \\[default: the retriever's].", show_default=False)
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any other setting of the retriever's config, as KEY=VALUE (repeatable)."),
    ] = None,
    show_config: Annotated[
        bool, typer.Option("--show-config", help="Print the effective config with each value's origin and exit.")
    ] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last state.")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an interrupted run and start afresh.")] = False,
    json_output: Json = False,
) -> None:
    """Train a stage-1 retriever (LRURec by default) with early stopping; save the best checkpoint and its metrics."""
    from ..config import check_resume_restart, parse_sets, with_sets
    from ..data.artifact import load_dataset
    from ..stages.retrieve_train import retriever_class, train_retriever
    from .progress import RichReporter

    cls = retriever_class(retriever)
    flags |= {"dropout": dropout} if dropout is not None else {}
    flags = with_sets(flags, parse_sets(cls.Config, set_ or []))
    check_resume_restart(resume, restart)

    root = settings.workdir(workdir)
    # a missing or stale dataset is refused before the config table is printed (--show-config needs none)
    data = dataset if show_config else load_dataset(root, dataset)
    config, sources = _effective_config(root, data, cls, retriever, flags, resume)
    if show_config:
        from ..training import resolve_device

        resolve_device(device)  # what the run would refuse, --show-config refuses
        print_config(retriever, config, sources, json_output)
        return
    main = main_process()  # under accelerate launch, the main process alone speaks
    if not json_output and main:
        stdout.print(config_table(retriever, config, sources, with_help=False))
    try:
        manifest = train_retriever(
            data,
            workdir=root,
            retriever=retriever,
            flags=flags,
            device=device,
            resume=resume,
            restart=restart,
            reporter=None if json_output or not main else RichReporter,
            log=lambda message: stderr.print(message, style="dim", highlight=False),
        )
    except KeyboardInterrupt:
        from ..layout import Workdir
        from ..retrieval.checkpoint import retriever_dir
        from ..stages.retrieve_train import rerun_command

        if Workdir(root).resumable(retriever_dir(root, dataset, retriever)):
            rerun = rerun_command(dataset, retriever, root)
            stderr.print(f"Interrupted. Continue from the last validation with: {rerun} --resume")
        else:
            stderr.print("Interrupted before the first validation: nothing to resume; rerun the same command.")
        raise typer.Exit(130) from None
    if not manifest:  # another process of an accelerate launch: the main one reports
        return
    if json_output:
        print_json(manifest)
    else:
        _print_result(manifest, dataset, retriever, root)


def _effective_config(root, dataset, cls, retriever: str, flags: dict, resume: bool):
    """What will run: the interrupted run's config on --resume (a flag may not change it), else the defaults, the
    dataset's suggestions and the flags; each value with where it came from. ``dataset``: a name, or loaded."""
    from ..stages.retrieve_train import resolve_config, resumed_config

    if resume:
        from ..data.artifact import load_dataset

        return resumed_config(root, load_dataset(root, dataset), retriever, flags)
    return resolve_config(cls, getattr(dataset, "name", dataset), flags)


def _print_result(manifest: dict, dataset: str, retriever: str, root) -> None:
    from ..retrieval.checkpoint import retriever_dir

    training = manifest["training"]
    stdout.print(
        metrics_table(f"{retriever} on {dataset} (whole history masked, all items ranked)", manifest["metrics"])
    )
    stderr.print(
        f"{training['steps']:,} steps, {training['epochs']} epochs, best at step {training['best_step']:,}, "
        f"{training['steps_per_second']:.1f} steps/s, {training['wall_seconds']:.0f} s. "
        f"Saved to {retriever_dir(root, dataset, retriever)}"
    )


def print_config(name: str, config, sources, json_output: bool) -> None:
    """--show-config: the table with each setting's meaning, or with --json each setting's value and origin."""
    import dataclasses

    if json_output:
        print_json({f.name: {"value": getattr(config, f.name), "from": sources.get(f.name, "default")}
                    for f in dataclasses.fields(config)})  # fmt: skip
    else:
        stdout.print(config_table(name, config, sources, with_help=True))


def config_table(name: str, config, sources, with_help: bool):
    """The effective config, each value with where it came from (default, dataset, retriever, flag)."""
    import dataclasses

    from rich.table import Table

    table = Table(title=f"{name} config ({type(config).__name__})")
    for column in ("setting", "value", "from") + (("meaning",) if with_help else ()):
        table.add_column(column)
    for f in dataclasses.fields(config):
        row = [f.name, str(getattr(config, f.name)), sources.get(f.name, "default")]
        table.add_row(*row, *((f.metadata.get("help", ""),) if with_help else ()))
    return table


def install(cli: typer.Typer) -> None:
    cli.command("retrieve-train", epilog=EPILOG)(retrieve_train)
