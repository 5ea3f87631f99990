"""The dataset artifact: three Parquet tables and a manifest, written atomically.

Layout: ``<workdir>/<dataset>/dataset/{interactions,items,users}.parquet`` + ``manifest.json``. The manifest
records the config, package versions, input checksums, statistics and the checksum of every table, so a later
stage can refuse a stale or altered dataset. The folder is built under a temporary name and renamed into place:
an interrupted run leaves no ``dataset/`` folder that a later stage would trust.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .. import __version__
from ..errors import ArtifactError, WorkdirError
from .pipeline import Tables
from .rawfiles import sha256_of

FORMAT = "llamarec.dataset"
FORMAT_VERSION = 1
TABLES = ("interactions", "items", "users")


def dataset_dir(workdir: Path, name: str) -> Path:
    return workdir / name / "dataset"


def _json(data) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_dataset(workdir: Path, name: str, tables: Tables, manifest: dict) -> Dataset:
    """Write the tables and manifest to a temporary folder, then swap it in place of the old artifact."""
    final = dataset_dir(workdir, name)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(".dataset.tmp-*"):  # left by an interrupted run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".dataset.tmp-{os.getpid()}"
        tmp.mkdir()
    except OSError as exc:
        raise WorkdirError.unwritable(workdir, exc) from exc
    try:
        files = {}
        for table in TABLES:
            path = tmp / f"{table}.parquet"
            getattr(tables, table).write_parquet(path, compression="zstd", statistics=True)
            files[path.name] = sha256_of(path)
        manifest = {**manifest, "files": files, "format": FORMAT, "format_version": FORMAT_VERSION}
        (tmp / "manifest.json").write_text(_json(manifest), encoding="utf-8")
        old = final.parent / ".dataset.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Dataset(name, final, manifest, tables.interactions, tables.items, tables.users)


def versions() -> dict:
    return {"llamarec": __version__, "polars": pl.__version__, "python": platform.python_version()}


@dataclass
class Dataset:
    """A preprocessed dataset as later stages use it."""

    name: str
    path: Path
    manifest: dict
    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame

    @property
    def num_items(self) -> int:
        return self.items.height

    @property
    def checksum(self) -> str:
        """Identifies this exact dataset: downstream artifacts record it and refuse a different one."""
        return self.manifest["files"]["interactions.parquet"]

    @property
    def titles(self) -> dict[int, str]:
        """item id -> title."""
        return dict(zip(self.items["item"].to_list(), self.items["title"].to_list()))

    def user_id(self, user: str) -> int | None:
        """The internal id of a user given by the dataset's original id, or else by the internal number."""
        found = self.users.filter(pl.col("original_id") == str(user))["user"]
        if found.len():
            return int(found[0])
        if str(user).isdigit() and self.users.filter(pl.col("user") == int(user)).height:
            return int(user)
        return None

    def sequences(self, split: str) -> dict[int, list[int]]:
        """user -> items of one split ("train", "val", "test") in time order."""
        grouped = self.interactions.filter(pl.col("split") == split).group_by("user", maintain_order=True).agg("item")
        return dict(zip(grouped["user"].to_list(), grouped["item"].to_list()))


def load_dataset(workdir: Path, name: str) -> Dataset:
    path = dataset_dir(workdir, name)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(f"No dataset '{name}' in {workdir}. Run first: llamarec preprocess {name}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ArtifactError(f"{manifest_path} is corrupt ({exc}). Rerun: llamarec preprocess {name}") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} was written by an incompatible llamarec version. Rerun: llamarec preprocess {name}"
        )
    frames = {}
    for table in TABLES:
        file = path / f"{table}.parquet"
        if not file.is_file() or sha256_of(file) != manifest["files"].get(file.name):
            raise ArtifactError(f"{file} is missing or altered. Rerun: llamarec preprocess {name}")
        frames[table] = pl.read_parquet(file)
    return Dataset(name=name, path=path, manifest=manifest, **frames)
