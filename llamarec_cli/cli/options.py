"""Options shared by several commands: one definition each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def path(value: str) -> Path:
    """A path option's value; '' is refused: Path('') is the current folder, so `-w "$UNSET"` would otherwise write
    every artifact there."""
    if not value.strip():
        raise typer.BadParameter("is empty: name a path, or leave the option out for its default.")
    return Path(value)


def folder(value: str) -> Path:
    """An existing folder (checked before any model loads, not after)."""
    found = path(value)
    if not found.is_dir():
        raise typer.BadParameter(f"{value} is not a folder." if found.exists() else f"{value} does not exist.")
    return found


Workdir = Annotated[
    Path | None,
    typer.Option(
        "--workdir",
        "-w",
        parser=path,
        envvar="LLAMAREC_WORKDIR",
        show_envvar=True,
        help="Work directory for every artifact \\[default: ./llamarec-runs].",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DatasetName = Annotated[str, typer.Argument(help="Dataset name (as given to llamarec preprocess).")]
RetrieverName = Annotated[
    str, typer.Option("--retriever", "-r", help="A registered retriever (see: llamarec plugins).")
]
RankedRetriever = Annotated[
    str | None,
    typer.Option(
        "--retriever",
        "-r",
        help="Whose candidates to rank [default: the trained ranker's retriever; lrurec without a trained ranker].",
        show_default=False,
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.")]
TemplatesDir = Annotated[
    Path | None,
    typer.Option(
        "--templates-dir",
        envvar="LLAMAREC_TEMPLATES_DIR",
        parser=folder,
        show_envvar=True,
        help="A directory of prompt templates (*.toml), searched before plugin and packaged ones.",
    ),
]
TrustRemoteCode = Annotated[
    bool, typer.Option("--trust-remote-code", help="Let transformers run the model repository's own Python code.")
]
Dtype = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="bf16, fp16, fp32 or auto (bf16 where the GPU supports it or the CPU multiplies it fast) "
        "\\[default: the ranker's].",
        show_default=False,
    ),
]
Fusion = Annotated[
    str,
    typer.Option(
        "--fusion",
        help="Combine the ranker's letter scores with the retriever's: auto (the α rank-train chose on validation), "
        "none (the ranker alone) or α from 0 (the retriever's order) to 1 (the ranker's).",
    ),
]
# what serve-shell and serve load: a trained ranker, or a base model zero-shot
Ranker = Annotated[str, typer.Option("--ranker", help="A trained ranker's --name, or none.")]
Adapter = Annotated[str | None, typer.Option("--adapter", help="none: the base model zero-shot.")]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Base model for --adapter none: an alias, a local directory or a hub id "
        "\\[default: meta-llama/Llama-2-7b-hf, the paper's; smollm2-135m runs on a CPU].",
        show_default=False,
    ),
]


def check_loading_options(device: str | None, dtype: str | None, fusion: str | None) -> None:
    """--device (None: not used), --dtype and --fusion checked before anything loads (serve: before the port is
    bound), whether or not a ranker will read the last two."""
    from ..errors import ConfigError
    from ..precision import DTYPES
    from ..ranking.fusion import resolve_alpha
    from ..training import resolve_device

    if device is not None:
        resolve_device(device)
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"Unknown dtype '{dtype}'. Use one of: {', '.join(DTYPES)}.")
    resolve_alpha(fusion, None)
