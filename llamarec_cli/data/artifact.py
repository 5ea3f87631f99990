"""The dataset artifact: three Parquet tables and a manifest, written atomically.

Layout: ``<workdir>/<dataset>/dataset/{interactions,items,users}.parquet`` + ``manifest.json``. The manifest
records the config, package versions, input checksums, statistics and the checksum of every table, so a later
stage can refuse a stale or altered dataset. The folder is built under a temporary name and renamed into place:
an interrupted run leaves no ``dataset/`` folder that a later stage would trust.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .. import settings
from ..errors import ArtifactError, UnknownUserError, as_typed
from ..files import replace_dir, sha256_of
from ..layout import Workdir
from ..workspace import writing
from .pipeline import SPLITS, Tables

FORMAT = "llamarec.dataset"
FORMAT_VERSION = 1
TABLES = ("interactions", "items", "users")


def dataset_dir(workdir: Path, name: str) -> Path:
    return Workdir(workdir).dataset(name)


def _json(data) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_dataset(workdir: Path, name: str, tables: Tables, manifest: dict) -> Dataset:
    """Write the tables and manifest to a temporary folder, then swap it in place of the old artifact."""
    problem = table_problem({table: getattr(tables, table) for table in TABLES})
    if problem:  # rerunning preprocess would make them again: nothing to tell the user to rerun
        raise ArtifactError(
            f"The tables made for dataset '{name}' are inconsistent ({problem}); nothing was written. Please report "
            "this, with the command you ran, to llamarec or to the dataset's plugin."
        )
    final = dataset_dir(workdir, name)
    with writing(workdir, workdir=True):
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(".dataset.tmp-*"):  # left by an interrupted run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".dataset.tmp-{os.getpid()}"
        tmp.mkdir()
    try:
        files = {}
        for table in TABLES:
            path = tmp / f"{table}.parquet"
            getattr(tables, table).write_parquet(path, compression="zstd", statistics=True)
            files[path.name] = sha256_of(path)
        manifest = {**manifest, "files": files, "format": FORMAT, "format_version": FORMAT_VERSION}
        (tmp / "manifest.json").write_text(_json(manifest), encoding="utf-8")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Dataset(name, final, manifest, tables.interactions, tables.items, tables.users)


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
    def titles_checksum(self) -> str:
        """Identifies the item titles (items.parquet), which ``checksum`` leaves out: a ranker reads them."""
        return self.manifest["files"]["items.parquet"]

    @property
    def titles(self) -> dict[int, str]:
        """item id -> title."""
        return dict(zip(self.items["item"].to_list(), self.items["title"].to_list()))

    def user_id(self, user: str) -> int | None:
        """The internal id of a user given by the dataset's original id. Only by that: the internal numbers are
        other users' ids (in MovieLens, user 3 filtered out and internal number 3 is user 4)."""
        found = self.users.filter(pl.col("original_id") == str(user))["user"]
        return int(found[0]) if found.len() else None

    def require_user(self, user: str) -> int:
        """``user_id``, or one line naming the dataset's size and some of its users."""
        internal = self.user_id(user)
        if internal is None:
            sample = ", ".join(self.users["original_id"].drop_nulls().head(3).to_list()) or "none with an id"
            raise UnknownUserError(
                f"No user '{as_typed(str(user))}' in {self.name} ({self.users.height:,} users, e.g. {sample})."
            )
        return internal

    def sequences(self, split: str) -> dict[int, list[int]]:
        """user -> items of one split ("train", "val", "test") in time order."""
        grouped = self.interactions.filter(pl.col("split") == split).group_by("user", maintain_order=True).agg("item")
        return dict(zip(grouped["user"].to_list(), grouped["item"].to_list()))


# What load_dataset relies on, and the types the writer gives the rest (a manifest written by hand or by a test may
# leave those out, but never gives them another type).
REQUIRED = {"format": str, "format_version": int, "files": dict}
OPTIONAL = {"dataset": str, "description": str, "config": dict, "inputs": list, "statistics": dict, "versions": dict}
SCHEMAS = {
    "interactions": {"user": pl.UInt32, "item": pl.UInt32, "timestamp": pl.Int64, "split": SPLITS},
    "items": {"item": pl.UInt32, "original_id": pl.String, "title": pl.String},
    "users": {"user": pl.UInt32, "original_id": pl.String},
}
_JSON_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "an object",
    list: "a list",
}


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_manifest(manifest: object, manifest_path: Path, rerun: str) -> dict:
    """The manifest as load_dataset needs it, or an ArtifactError that says which key is wrong."""

    def refuse(problem: str) -> ArtifactError:
        return ArtifactError(f"{manifest_path} is corrupt: {problem}. Rerun: {rerun}")

    if not isinstance(manifest, dict):
        raise refuse(f"it holds {_JSON_TYPES.get(type(manifest), 'null')}, not an object")
    for key in REQUIRED:
        if key not in manifest:
            raise refuse(f"'{key}' is missing")
    for key, kind in {**REQUIRED, **OPTIONAL}.items():
        if key in manifest and type(manifest[key]) is not kind:
            raise refuse(f"'{key}' should be {_JSON_TYPES[kind]}")
    files = manifest["files"]
    for table in TABLES:
        digest = files.get(f"{table}.parquet")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise refuse(f"'files' gives no SHA-256 for {table}.parquet")
    return manifest


def load_dataset(workdir: Path, name: str | Dataset) -> Dataset:
    """The dataset artifact, every table checked against its manifest; refused with what to rerun. A Dataset already
    loaded is returned as it is: the pipeline loads and checks it once and hands it to every stage."""
    if isinstance(name, Dataset):
        return name
    path = dataset_dir(workdir, name)
    manifest_path = path / "manifest.json"
    rerun = settings.command_for(f"llamarec preprocess {name}", workdir)
    if not manifest_path.is_file():
        from .. import plugins

        plugins.datasets().get(name)  # a name nothing registers lists the known ones: preprocess could not make it
        raise ArtifactError(f"No dataset '{name}' in {workdir}. Run first: {rerun}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ArtifactError(f"{manifest_path} is corrupt ({_first_line(exc)}). Rerun: {rerun}") from None
    stamp = (manifest.get("format"), manifest.get("format_version")) if isinstance(manifest, dict) else None
    if stamp and type(stamp[0]) is str and type(stamp[1]) is int and stamp != (FORMAT, FORMAT_VERSION):
        raise ArtifactError(f"{path} was written by an incompatible llamarec version. Rerun: {rerun}")
    manifest = _check_manifest(manifest, manifest_path, rerun)
    frames = {}
    for table in TABLES:
        file = path / f"{table}.parquet"
        if not file.is_file() or sha256_of(file) != manifest["files"][file.name]:
            raise ArtifactError(f"{file} is missing or altered. Rerun: {rerun}")
        try:
            frame = pl.read_parquet(file)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ArtifactError(f"{file} cannot be read ({_first_line(exc)}). Rerun: {rerun}") from None
        expected = SCHEMAS[table]
        if {c: frame.schema.get(c) for c in expected} != expected:
            raise ArtifactError(f"{file} does not hold the columns of a dataset table. Rerun: {rerun}")
        frames[table] = frame
    problem = table_problem(frames)
    if problem:
        raise ArtifactError(f"{path} is inconsistent: {problem}. Rerun: {rerun}")
    return Dataset(name=name, path=path, manifest=manifest, **frames)


def table_problem(frames: dict[str, pl.DataFrame]) -> str | None:
    """What every later stage relies on, checked in a few milliseconds, or what breaks it: ids 1..N with a title
    each, every interaction on a known user and item, and one test target (at most one validation target) per
    user. Tables edited by hand, or made by a faulty dataset reader, stop here rather than crash deep in training."""
    for table, column in (("items", "item"), ("users", "user")):
        ids = frames[table][column]
        if ids.len() == 0 or ids.min() != 1 or ids.max() != ids.len() or ids.n_unique() != ids.len():
            return f"the {column} ids of {table}.parquet are not 1..{ids.len()}"
    if frames["items"]["title"].str.strip_chars().fill_null("").eq("").any():
        return "an item in items.parquet has no title"
    interactions = frames["interactions"]
    for column, table in (("item", "items"), ("user", "users")):
        values = interactions[column]
        if interactions.height and not 1 <= values.min() <= values.max() <= frames[table].height:
            return f"interactions.parquet holds a {column} id that {table}.parquet does not have"
    targets = interactions.group_by("user").agg(
        (pl.col("split") == "test").sum().alias("test"), (pl.col("split") == "val").sum().alias("val")
    )
    wrong = targets.filter((pl.col("test") != 1) | (pl.col("val") > 1))
    if targets.height != frames["users"].height or wrong.height:
        return "not every user has exactly one test interaction (and at most one validation one)"
    return None
