"""What a dataset is, as far as llamarec and its plugins are concerned."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # polars is imported by the readers, not by `llamarec --help`
    import polars as pl

RawFiles = Mapping[str, Path]
"""Resolved raw files: ``RawFile.name`` -> local path."""


@dataclass(frozen=True)
class RawFile:
    """One raw input file and where it can come from.

    ``urls`` are tried in order. With ``archive`` set, the urls download that archive (a zip) and the file is the
    member whose base name is ``name``. ``sha256`` pins the content of the file itself (not the archive); without
    it the download is checked for completeness and its checksum is recorded in the cache and the manifest.
    ``aliases`` are other accepted names for the same content (e.g. the decompressed ``meta.json`` for
    ``meta.json.gz``).
    """

    name: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    archive: str | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset a plugin provides.

    ``read_interactions(files)`` returns one row per interaction with columns ``user``, ``item`` (any sortable
    type: the original ids) and ``timestamp`` (integer). ``read_titles(files, needed)`` returns columns ``item``
    and ``title``; ``needed`` is the set of original item ids that can still survive filtering (or ``None``), a
    hint that lets a slow reader skip the rest. llamarec does the title filter, the k-core, the id mapping and the
    leave-one-out split, identically for every dataset.
    """

    name: str
    description: str
    read_interactions: Callable[[RawFiles], pl.DataFrame]
    read_titles: Callable[[RawFiles, set | None], pl.DataFrame]
    raw_files: tuple[RawFile, ...] = ()
    min_interactions: int = 5
    source: str = ""
    licence: str = ""
    retrieval_defaults: Mapping[str, object] = field(default_factory=dict)
    """Retriever settings suited to this data (e.g. ``{"batch_size": 16, "max_len": 200}``); a user's flag wins."""
    ranking_defaults: Mapping[str, object] = field(default_factory=dict)
    """Ranker settings suited to this data (e.g. ``{"batch_size": 12}``); a user's flag wins."""
    split_sha256: str | None = None
    """SHA-256 of a published ready split of this data (the LlamaRec JSON form), if there is one: ``--from-split``
    warns when a file differs from it, and refuses, under another dataset's name, the file it identifies."""
