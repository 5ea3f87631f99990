"""llamarec preprocess"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import settings
from .options import Json, Workdir, path
from .output import print_json, stderr, stdout

EPILOG = (
    "Examples:  llamarec preprocess ml-100k --raw-dir ../shared/datasets/ml-latest-small   ·   "
    "llamarec preprocess beauty --from-split ../shared/datasets/beauty/llamarec-split.json --json"
)


def preprocess(
    dataset: Annotated[str, typer.Argument(help="Dataset name: ml-100k, beauty, games, or one from a plugin.")],
    workdir: Workdir = None,
    raw_dir: Annotated[
        Path | None,
        typer.Option(
            "--raw-dir",
            parser=path,
            envvar="LLAMAREC_RAW_DIR",
            show_envvar=True,
            help="Folder with the raw files (or their original archive). Else the cache, else a download.",
        ),
    ] = None,
    from_split: Annotated[
        Path | None,
        typer.Option(
            "--from-split", parser=path, help="Import a ready split in the LlamaRec JSON form instead of raw files."
        ),
    ] = None,
    unescape_titles: Annotated[
        bool, typer.Option("--unescape-titles", help="Turn HTML entities in titles (&amp;) into characters.")
    ] = False,
    json_output: Json = False,
) -> None:
    """Build a dataset artifact from raw files and print its statistics (the paper's Table 2)."""
    from rich.table import Table

    from ..stages.preprocess import preprocess as run

    dataset_ = run(
        dataset,
        workdir=settings.workdir(workdir),
        raw_dir=settings.raw_dir(raw_dir),
        from_split=from_split,
        unescape_titles=unescape_titles,
        log=lambda message: stderr.print(message, style="dim", highlight=False),
    )
    stats = dataset_.manifest["statistics"]
    if json_output:
        print_json({"dataset": dataset, "path": str(dataset_.path), **stats})
        return
    table = Table(title=f"{dataset}: {dataset_.manifest['description']}")
    for column in ("users", "items", "interactions", "avg. length", "density"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{stats['users']:,}",
        f"{stats['items']:,}",
        f"{stats['interactions']:,}",
        f"{stats['avg_length']:.2f}",
        f"{stats['density']:.4%}",
    )
    stdout.print(table)
    stderr.print(f"Written to {dataset_.path}")


def install(cli: typer.Typer) -> None:
    cli.command(epilog=EPILOG)(preprocess)
