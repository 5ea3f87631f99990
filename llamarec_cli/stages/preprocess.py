"""``llamarec preprocess`` as a library call."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import settings
from ..data.artifact import Dataset, dataset_dir, write_dataset
from ..data.pipeline import build_tables, statistics
from ..data.pipeline import unescape_titles as unescape
from ..data.rawfiles import resolve_raw_files
from ..data.split_import import read_split
from ..errors import ConfigError
from ..files import sha256_of
from ..version import versions
from ..workspace import ensure_writable

ID_RULE = (
    "user and item ids are the ranks (from 1) of the original ids in sorted order; equal timestamps are ordered "
    "by item id"
)


def _input(path: Path) -> dict:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def preprocess(
    name: str,
    *,
    workdir: Path,
    raw_dir: Path | None = None,
    from_split: Path | None = None,
    unescape_titles: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> Dataset:
    """Build dataset ``name`` from raw files (or import a ready split) and write it into ``workdir``.

    ``log`` receives one line per stage (the CLI prints them on stderr).
    """
    from .. import plugins  # lazily: the plugins load on first use

    # a library caller (a plugin's test) may pass strings
    workdir = Path(workdir)
    raw_dir, from_split = (Path(p) if p is not None else None for p in (raw_dir, from_split))
    spec = plugins.datasets().get(name)
    ensure_writable(workdir, workdir=True)  # before hours of work, not after
    if from_split is not None:
        if raw_dir is not None:
            log(f"--from-split given: the raw files in {raw_dir} are not read")
        log(f"Importing the split {from_split}")
        tables = read_split(from_split)
        config = {"source": "split", "unescape_titles": unescape_titles}
        inputs = [_input(from_split)]
        _check_split_owner(name, spec, from_split, inputs[0]["sha256"], workdir, log)
    else:
        files = resolve_raw_files(spec, raw_dir)
        for file, path in files.items():
            log(f"{file}: {path}")
        log("Filtering titles and the k-core, mapping ids, splitting")
        # Hash the inputs on the other core while the pipeline runs (hashlib releases the GIL).
        with ThreadPoolExecutor(max_workers=1) as pool:
            hashed = pool.map(_input, files.values())
            tables = build_tables(spec, files)
            inputs = list(hashed)
        config = {
            "source": "raw",
            "min_interactions": spec.min_interactions,
            "unescape_titles": unescape_titles,
            "id_rule": ID_RULE,
        }
    if unescape_titles:
        tables = unescape(tables)
    log(f"Writing {dataset_dir(workdir, name)}")
    manifest = {
        "dataset": name,
        "description": spec.description,
        "config": config,
        "inputs": inputs,
        "statistics": statistics(tables),
        "versions": versions("polars"),
    }
    return write_dataset(workdir, name, tables, manifest)


def _check_split_owner(name: str, spec, path: Path, digest: str, workdir: Path, log: Callable[[str], None]) -> None:
    """Refuse a published split imported under another dataset's name (Beauty's users written as 'games' would
    train and report under the wrong name); warn when a dataset's split is not its published one."""
    from .. import plugins

    registry = plugins.datasets()
    owner = next((n for n in registry.names() if registry.get(n).split_sha256 == digest), None)
    if owner is not None and owner != name:
        raise ConfigError(
            f"{path} is the published split of '{owner}', not of '{name}'. "
            f"Run: {settings.command_for(f'llamarec preprocess {owner} --from-split {path}', workdir)}"
        )
    if spec.split_sha256 is not None and digest != spec.split_sha256:
        log(f"warning: {path} is not the published split of '{name}' (SHA-256 {digest[:12]}…); figures may differ.")
