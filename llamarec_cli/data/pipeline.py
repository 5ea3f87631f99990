"""Raw interactions -> the dataset every later stage reads (METHOD.md §2), in polars.

Order, as in the reference: every rating counts -> drop items without a non-empty title -> iterative k-core
(k = 5) -> ids 1..N -> each user's interactions in time order -> leave-one-out (last = test, second-to-last =
validation, the rest = training).

Deterministic by construction (a fix of the reference, which numbered ids in Python ``set`` order):
- user and item ids are the ranks of the original ids in sorted order (numeric ids numerically, text ids by code
  point), starting at 1;
- interactions with the same timestamp are ordered by item id (Amazon timestamps are per day, so ties are common).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import polars as pl

from ..errors import LlamarecError
from .spec import DatasetSpec, RawFiles

ID = pl.UInt32
SPLITS = pl.Enum(["train", "val", "test"])


@dataclass
class Tables:
    """The three tables of a dataset artifact."""

    interactions: pl.DataFrame  # user, item, timestamp, split; by user, then time order
    items: pl.DataFrame  # item, original_id, title
    users: pl.DataFrame  # user, original_id


def k_core(frame: pl.DataFrame, k: int) -> pl.DataFrame:
    """Drop users and items with fewer than k interactions until none is left (the unique maximal k-core)."""
    while True:
        before = frame.height
        frame = frame.filter(pl.len().over("i") >= k)
        frame = frame.filter(pl.len().over("u") >= k)
        if frame.height == before:
            return frame


def _codes(frame: pl.DataFrame, column: str, code: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Replace an original id column by its rank in sorted order; return the frame and the code table."""
    table = frame.select(pl.col(column).unique()).sort(column).with_row_index(code, offset=1)
    table = table.with_columns(pl.col(code).cast(ID))
    return frame.join(table, on=column, how="left").drop(column), table


def unescape_titles(tables: Tables) -> Tables:
    """Turn HTML entities (``&amp;``) into characters: an option, since the paper's prompts kept them."""
    titles = pl.col("title").map_elements(html.unescape, return_dtype=pl.String)
    return Tables(tables.interactions, tables.items.with_columns(titles), tables.users)


def build_tables(spec: DatasetSpec, files: RawFiles) -> Tables:
    raw = spec.read_interactions(files)
    missing = {"user", "item", "timestamp"} - set(raw.columns)
    if missing:
        raise LlamarecError(f"Dataset '{spec.name}': read_interactions returned no {', '.join(sorted(missing))}.")
    frame = raw.select("user", "item", pl.col("timestamp").cast(pl.Int64))
    if frame.height == 0:
        raise LlamarecError(f"Dataset '{spec.name}' has no interactions.")
    frame, user_codes = _codes(frame, "user", "u")
    frame, item_codes = _codes(frame, "item", "i")

    # A k-core can only shrink when items are removed, so the titles of items outside the title-less k-core are
    # never needed: read only those (the metadata reader is the slow part on large Amazon files).
    superset = k_core(frame, spec.min_interactions)
    needed = item_codes.join(superset.select(pl.col("i").unique()), on="i")
    titles = spec.read_titles(files, set(needed["item"].to_list()))
    titles = titles.select("item", pl.col("title").str.strip_chars()).filter(pl.col("title") != "")
    titled = item_codes.join(titles.unique(subset="item", keep="last"), on="item", how="inner")
    frame = k_core(superset.join(titled.select("i"), on="i", how="semi"), spec.min_interactions)
    if frame.height == 0:
        raise LlamarecError(
            f"Dataset '{spec.name}': no user and item keep {spec.min_interactions} interactions after filtering."
        )

    # Final ids 1..N keep the sorted order of the original ids.
    users = frame.select(pl.col("u").unique().sort()).with_row_index("user", offset=1)
    items = frame.select(pl.col("i").unique().sort()).with_row_index("item", offset=1)
    frame = (
        frame.join(users, on="u")
        .join(items, on="i")
        .select(pl.col("user").cast(ID), pl.col("item").cast(ID), "timestamp")
        .sort("user", "timestamp", "item")
    )
    position = pl.int_range(pl.len()).over("user")
    length = pl.len().over("user")
    split = (
        pl.when(position == length - 1)
        .then(pl.lit("test"))
        .when(position == length - 2)
        .then(pl.lit("val"))
        .otherwise(pl.lit("train"))
    )
    interactions = frame.with_columns(split.cast(SPLITS).alias("split"))

    item_table = (
        items.join(titled, on="i")
        .select(pl.col("item").cast(ID), pl.col("item_right").cast(pl.String).alias("original_id"), "title")
        .sort("item")
    )
    user_table = (
        users.join(user_codes, on="u")
        .select(pl.col("user_right").cast(pl.String).alias("original_id"), pl.col("user").cast(ID))
        .select("user", "original_id")
        .sort("user")
    )
    return Tables(interactions, item_table, user_table)


def statistics(tables: Tables) -> dict:
    """The paper's Table 2: users, items, interactions, average length, density."""
    users = tables.interactions["user"].n_unique()
    items = tables.interactions["item"].n_unique()
    interactions = tables.interactions.height
    return {
        "users": users,
        "items": items,
        "interactions": interactions,
        "avg_length": round(interactions / users, 2),
        "density": round(interactions / (users * items), 6),
    }
