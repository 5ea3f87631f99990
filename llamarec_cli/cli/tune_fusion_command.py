"""llamarec tune-fusion"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import settings
from .options import DatasetName, Device, Json, TemplatesDir, TrustRemoteCode, Workdir
from .output import note, print_json, stdout

EPILOG = (
    "Examples:  llamarec tune-fusion beauty --ranker default   ·   "
    "llamarec tune-fusion games --ranker retrieved --val-examples 1000"
)


def tune_fusion(
    dataset: DatasetName,
    ranker: Annotated[str, typer.Option("--ranker", help="The trained ranker's --name.")] = "default",
    val_examples: Annotated[
        int | None,
        typer.Option(
            "--val-examples",
            help="Choose α on a seeded sample of this many validation users; default all (never ones trained on).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Requests per forward pass.")] = 8,
    templates_dir: TemplatesDir = None,
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    workdir: Workdir = None,
    json_output: Json = False,
) -> None:
    """Choose a trained ranker's fusion α again on more validation users (never the test users), and store it."""
    from ..stages.tune_fusion import tune_fusion as run

    fusion = run(
        dataset,
        workdir=settings.workdir(workdir),
        ranker=ranker,
        val_examples=val_examples,
        batch_size=batch_size,
        device=device,
        templates_dir=templates_dir,
        trust_remote_code=trust_remote_code,
        log=note,
    )
    if json_output:
        print_json(fusion)
        return
    curve, previous, alpha = fusion["val"], fusion["previous"], f"{fusion['alpha']:g}"
    before = f"was {previous['alpha']:g} on {previous['users']:,} users" if previous else "none was stored"
    stdout.print(
        f"α = {alpha}, chosen on {fusion['users']:,} validation users ({before}): validation NDCG@10 "
        f"{curve[alpha]:.4f} fused, {curve['0']:.4f} the retriever's order, {curve['1']:.4f} the "
        f"ranker alone. evaluate and serve-shell use it with --fusion auto.",
        highlight=False,
    )


def install(cli: typer.Typer) -> None:
    cli.command("tune-fusion", epilog=EPILOG)(tune_fusion)
