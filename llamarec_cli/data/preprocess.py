"""``llamarec preprocess`` as a library call."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .. import plugins
from ..errors import WorkdirError
from .artifact import Dataset, load_dataset, versions, write_dataset
from .pipeline import build_tables, statistics
from .rawfiles import resolve_raw_files, sha256_of
from .split_import import read_split

ID_RULE = (
    "user and item ids are the ranks (from 1) of the original ids in sorted order; equal timestamps are ordered "
    "by item id"
)


def ensure_writable(workdir: Path) -> None:
    """Fail before hours of work, not after."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=workdir, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise WorkdirError(
            f"Cannot write to work directory {workdir}: {exc.strerror or exc}. "
            f"Choose a writable one with --workdir or LLAMAREC_WORKDIR."
        ) from exc


def _input(path: Path) -> dict:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def preprocess(
    name: str,
    *,
    workdir: Path,
    raw_dir: Path | None = None,
    from_split: Path | None = None,
    unescape_titles: bool = False,
) -> Dataset:
    """Build dataset ``name`` from raw files (or import a ready split) and write it into ``workdir``."""
    spec = plugins.datasets().get(name)
    ensure_writable(workdir)
    if from_split is not None:
        tables = read_split(from_split)
        config = {"source": "split", "unescape_titles": False}
        inputs = [_input(from_split)]
    else:
        files = resolve_raw_files(spec, raw_dir)
        tables = build_tables(spec, files, unescape_titles=unescape_titles)
        config = {
            "source": "raw",
            "min_interactions": spec.min_interactions,
            "unescape_titles": unescape_titles,
            "id_rule": ID_RULE,
        }
        inputs = [_input(path) for path in files.values()]
    manifest = {
        "dataset": name,
        "description": spec.description,
        "config": config,
        "inputs": inputs,
        "statistics": statistics(tables),
        "versions": versions(),
    }
    write_dataset(workdir, name, tables, manifest)
    return load_dataset(workdir, name)
