"""Import a ready split in the LlamaRec JSON form (see shared/README.md): train/val/test/meta/umap/smap.

Ids are kept as they are (1..N), so that results stay comparable with the split's authors'. The split carries no
timestamps; the order of each user's list is the time order.
"""

from __future__ import annotations

import json
from itertools import permutations
from pathlib import Path

import polars as pl

from ..errors import DataFormatError
from .pipeline import ID, SPLITS, Tables

KEYS = ("train", "val", "test", "meta", "umap", "smap")


def _dense(path: Path, ids: set[int], what: str) -> None:
    if ids != set(range(1, len(ids) + 1)):
        raise DataFormatError(path, f"{what} ids must be 1..{len(ids)} without gaps")


def read_split(path: Path) -> Tables:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataFormatError(path, "no such file") from None
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise DataFormatError(path, f"not valid JSON ({exc})", line) from None
    if not isinstance(data, dict) or set(KEYS) - set(data):
        have = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataFormatError(path, f"expected an object with keys {', '.join(KEYS)}; found {have}")

    train, val, test = data["train"], data["val"], data["test"]
    splits = {"train": train, "val": val, "test": test}
    for a, b in permutations(splits, 2):
        extra = sorted(set(splits[a]) - set(splits[b]), key=str)
        if extra:
            raise DataFormatError(
                path,
                f"users differ between train, val and test: user {extra[0]} is in {a} but not in {b} "
                f"({len(extra)} such users)",
            )
    for split, lists in (("val", val), ("test", test)):
        bad = next((u for u, items in lists.items() if not (isinstance(items, list) and len(items) == 1)), None)
        if bad is not None:
            raise DataFormatError(path, f"{split} of user {bad} must hold exactly one item, not {lists[bad]!r}")

    users = [int(u) for u in train]
    _dense(path, set(users), "user")
    try:
        rows = pl.DataFrame(
            {"user": users, "item": [train[u] + val[u] + test[u] for u in train]},
            schema={"user": ID, "item": pl.List(pl.Int64)},
        )
    except (TypeError, ValueError, pl.exceptions.PolarsError) as exc:
        raise DataFormatError(path, f"train/val/test must map user ids to lists of item ids ({exc})") from None
    interactions = rows.explode("item").with_columns(pl.col("item").cast(ID, strict=False))
    if interactions["item"].null_count():
        raise DataFormatError(path, "item ids must be positive integers")
    position = pl.int_range(pl.len()).over("user")
    length = pl.len().over("user")
    interactions = interactions.sort("user", maintain_order=True).select(
        "user",
        "item",
        pl.lit(None, dtype=pl.Int64).alias("timestamp"),
        pl.when(position == length - 1)
        .then(pl.lit("test"))
        .when(position == length - 2)
        .then(pl.lit("val"))
        .otherwise(pl.lit("train"))
        .cast(SPLITS)
        .alias("split"),
    )

    used = set(interactions["item"].unique().to_list())
    _dense(path, used, "item")
    meta = {int(k): v for k, v in data["meta"].items()}
    untitled = sorted(used - {i for i, t in meta.items() if isinstance(t, str) and t.strip()})
    if untitled:
        raise DataFormatError(path, f"item {untitled[0]} has no title in 'meta' ({len(untitled)} such items)")
    smap = {int(v): str(k) for k, v in data["smap"].items()}
    umap = {int(v): str(k) for k, v in data["umap"].items()}
    items = pl.DataFrame(
        {
            "item": sorted(used),
            "original_id": [smap.get(i) for i in sorted(used)],
            "title": [meta[i] for i in sorted(used)],
        },
        schema={"item": ID, "original_id": pl.String, "title": pl.String},
    )
    user_table = pl.DataFrame(
        {"user": sorted(users), "original_id": [umap.get(u) for u in sorted(users)]},
        schema={"user": ID, "original_id": pl.String},
    )
    return Tables(interactions, items, user_table)
