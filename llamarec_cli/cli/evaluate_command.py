"""llamarec evaluate"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import settings
from .options import (
    DatasetName,
    Device,
    Dtype,
    Fusion,
    Json,
    Model,
    RankedRetriever,
    TemplatesDir,
    TrustRemoteCode,
    Workdir,
    check_loading_options,
)
from .output import note, print_json, stderr, stdout

EPILOG = (
    "Examples:  llamarec evaluate ml-100k   ·   llamarec evaluate ml-100k --adapter none --model smollm2-135m "
    "(zero-shot)   ·   llamarec evaluate beauty --ranker none (the retriever alone)   ·   llamarec evaluate ml-100k "
    "--fusion none (the ranker alone, no fusion with the retriever's scores)"
)


def evaluate(
    dataset: DatasetName,
    ranker: Annotated[
        str, typer.Option("--ranker", help="A trained ranker's --name, or none for the retriever's order alone.")
    ] = "default",
    adapter: Annotated[
        str | None, typer.Option("--adapter", help="none: rank zero-shot with the base model; or a PEFT adapter dir.")
    ] = None,
    model: Model = None,
    template: Annotated[str | None, typer.Option("--template", help="Prompt template for --adapter none.")] = None,
    templates_dir: TemplatesDir = None,
    retriever: RankedRetriever = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Requests per forward pass.")] = 8,
    max_examples: Annotated[
        int | None, typer.Option("--max-examples", help="Rank a seeded sample of this many subset users.")
    ] = None,
    quantization: Annotated[str | None, typer.Option("--quantization", help="4bit, 8bit, none or auto.")] = None,
    fusion: Fusion = "auto",
    dtype: Dtype = None,
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    workdir: Workdir = None,
    json_output: Json = False,
) -> None:
    """Rank the test users' candidates and report the subset and overall metrics, ranker next to retriever."""
    from ..stages.evaluate import evaluate as run

    check_loading_options(None if ranker == "none" else device, dtype, fusion)  # the retriever alone runs nothing

    report = run(
        dataset,
        workdir=settings.workdir(workdir),
        ranker=ranker,
        retriever=retriever,
        adapter=adapter,
        model=model,
        template=template,
        device=device,
        quantization=quantization,
        dtype=dtype,
        batch_size=batch_size,
        max_examples=max_examples,
        fusion=fusion,
        templates_dir=templates_dir,
        trust_remote_code=trust_remote_code,
        log=note,
    )
    if json_output:
        print_json(report)
        return
    print_report(report)
    stderr.print(
        f"{report['subset_users']:,} of {report['test_users']:,} test users have the true item among the "
        f"{report['k']} candidates (hit-rate {report['hit_rate']:.4f}). Report: {report['report_files'][1]}"
    )


def print_report(report: dict) -> None:
    """Both views as tables, then whether each order's gain over the retriever's order is more than chance."""
    from ..stages.evaluate import paired_lines

    stdout.print(report_table(report, "subset", "valid retrieval subset"))
    stdout.print(report_table(report, "overall", "all test users"))
    for line in paired_lines(report):
        stdout.print(line, highlight=False)


def report_table(report: dict, view: str, title: str):
    from rich.table import Table

    from ..stages.evaluate import NAMES, REPORT_KS

    table = Table(title=f"{report['dataset']} test, {title}")
    table.add_column("order")
    for k in REPORT_KS:
        for name in NAMES:
            table.add_column(f"{name}@{k}", justify="right")
    for who, metrics in report[view].items():
        table.add_row(who, *(f"{metrics[f'{n}@{k}']:.4f}" for k in REPORT_KS for n in NAMES))
    return table


def install(cli: typer.Typer) -> None:
    cli.command("evaluate", epilog=EPILOG)(evaluate)
