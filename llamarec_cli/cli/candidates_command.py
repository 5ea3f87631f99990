"""llamarec candidates"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import settings
from ..workspace import main_process
from .options import DatasetName, Device, Json, RetrieverName, Workdir
from .output import metrics_table, print_json, stderr, stdout

EPILOG = "Examples:  llamarec candidates ml-100k   ·   llamarec candidates beauty --retriever sasrec --k 50 --json"


def candidates(
    dataset: DatasetName,
    retriever: RetrieverName = "lrurec",
    k: Annotated[int, typer.Option("--k", help="Candidates per user.")] = 20,
    workdir: Workdir = None,
    device: Device = "auto",
    json_output: Json = False,
) -> None:
    """Export the retriever's top-k candidates for every validation and test user, with retrieval metrics."""
    from ..stages.candidates import candidates_paths, export_candidates

    manifest = export_candidates(dataset, workdir=settings.workdir(workdir), retriever=retriever, k=k, device=device)
    if not main_process():  # another process of an accelerate launch: the main one reports
        return
    if json_output:
        print_json(manifest)
        return
    hit = f"HitRate@{k}"
    rows = {split: {**values, hit: values["hit_rate"]} for split, values in manifest["splits"].items()}
    stdout.print(metrics_table(f"{retriever} candidates for {dataset} (top {k})", rows, extra=(hit,)))
    for split, values in manifest["splits"].items():
        stderr.print(
            f"{split}: {values['hits']:,} of {values['users']:,} users have their item among the candidates "
            f"(the valid retrieval subset the ranker sees)."
        )
    stderr.print(f"Written to {candidates_paths(settings.workdir(workdir), dataset, retriever)[0]}")


def install(cli: typer.Typer) -> None:
    cli.command("candidates", epilog=EPILOG)(candidates)
