"""Options shared by several commands: one definition each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Workdir = Annotated[
    Path | None,
    typer.Option(
        "--workdir",
        "-w",
        envvar="LLAMAREC_WORKDIR",
        show_envvar=True,
        help="Work directory for every artifact \\[default: ./llamarec-runs].",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
