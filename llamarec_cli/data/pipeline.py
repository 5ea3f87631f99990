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

import numpy as np
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


def k_core_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k-core: drop users and items with fewer than k rows until none is left.

    ``users`` and ``items`` are dense integer codes, one per row. The k-core is the unique maximal subset in which
    every user and item keeps k rows, so the order of removals does not matter; ``np.bincount`` makes each round
    one pass over the rows.
    """
    keep = np.ones(len(users), dtype=bool)
    n_users, n_items = int(users.max()) + 1, int(items.max()) + 1
    while True:
        kept = keep & (np.bincount(items[keep], minlength=n_items) >= k)[items]
        kept &= (np.bincount(users[kept], minlength=n_users) >= k)[users]
        if kept.sum() == keep.sum():
            return kept
        keep = kept


def hashed_codes(column: str) -> pl.Expr:
    """Dense codes from 64-bit hashes: far faster than grouping millions of strings. Checked by ``merged``."""
    return pl.col(column).hash(seed=0).rank("dense").cast(pl.UInt32)


def exact_codes(column: str) -> pl.Expr:
    return pl.col(column).rank("dense").cast(pl.UInt32)


def merged(frame: pl.DataFrame) -> bool:
    """Whether a code stands for two original ids among these rows (a hash collision).

    A collision can only change the k-core if a merged code survives it: otherwise the surviving rows are a k-core
    of the unmerged data and contain its k-core, and merging only adds rows, so they are equal.
    """
    per_code = frame.group_by("u").agg(pl.col("user").n_unique()).get_column("user").max()
    per_item = frame.group_by("i").agg(pl.col("item").n_unique()).get_column("item").max()
    return max(per_code, per_item) > 1


def _core(frame: pl.DataFrame, k: int) -> pl.DataFrame:
    return frame.filter(k_core_mask(frame["u"].to_numpy(), frame["i"].to_numpy(), k))


def unescape_titles(tables: Tables) -> Tables:
    """Turn HTML entities (``&amp;``) into characters: an option, since the paper's prompts kept them."""
    titles = pl.col("title").map_elements(html.unescape, return_dtype=pl.String)
    return Tables(tables.interactions, tables.items.with_columns(titles), tables.users)


def _sizes(frame: pl.DataFrame) -> str:
    """The counts an empty k-core is explained with: "the 16 interactions of 4 users and 4 items"."""

    def count(n: int, noun: str) -> str:
        return f"{n:,} {noun}" + ("" if n == 1 else "s")

    users, items = frame["user"].n_unique(), frame["item"].n_unique()
    return f"the {count(frame.height, 'interaction')} of {count(users, 'user')} and {count(items, 'item')}"


def _where(files: RawFiles) -> str:
    return f" (read: {', '.join(str(path) for path in files.values())})" if files else ""


def checked_frame(value, spec: DatasetSpec, method: str, columns: tuple[str, ...]) -> pl.DataFrame:
    """What a dataset's ``method`` returned, refused in one line that names it unless it is a polars DataFrame with
    ``columns``, none of them missing a value: a plugin's bad table otherwise failed deep in the pipeline."""
    where = f"Dataset '{spec.name}': {method}"
    if not isinstance(value, pl.DataFrame):
        raise LlamarecError(f"{where} must return a polars DataFrame with columns {', '.join(columns)}; got "
                            f"{type(value).__name__}.")  # fmt: skip
    missing = [c for c in columns if c not in value.columns]
    if missing:
        raise LlamarecError(f"{where} returned no {', '.join(missing)} column (it has: {', '.join(value.columns)}).")
    nulls = [c for c in columns if value[c].null_count()]
    if nulls:
        raise LlamarecError(f"{where} returned rows without a {' or '.join(nulls)}: drop or fill them.")
    return value.select(columns)


def build_tables(spec: DatasetSpec, files: RawFiles) -> Tables:
    raw = checked_frame(spec.read_interactions(files), spec, "read_interactions", ("user", "item", "timestamp"))
    if raw.height == 0:
        raise LlamarecError(f"Dataset '{spec.name}' has no interactions.")
    if not raw["timestamp"].dtype.is_integer():
        raise LlamarecError(
            f"Dataset '{spec.name}': read_interactions returned {raw['timestamp'].dtype} timestamps; they must be "
            "integers (e.g. seconds since 1970)."
        )
    frame = raw.select("user", "item", pl.col("timestamp").cast(pl.Int64))
    k = spec.min_interactions

    # A k-core can only shrink when items are removed, so the final items lie in the k-core taken without the
    # title filter: only their titles are needed (reading metadata is the slow part on large Amazon files).
    superset = _core(frame.with_columns(u=hashed_codes("user"), i=hashed_codes("item")), k)
    if superset.height == 0:
        raise LlamarecError(
            f"Dataset '{spec.name}': nothing survives the {k}-core filter (every user and item needs at least {k} "
            f"interactions): {_sizes(frame)} leave none. The raw files look incomplete or are a sample: "
            f"use the full files{_where(files)}."
        )
    if merged(superset):
        superset = _core(frame.with_columns(u=exact_codes("user"), i=exact_codes("item")), k)
    titles = checked_frame(
        spec.read_titles(files, set(superset["item"].unique().to_list())), spec, "read_titles", ("item", "title")
    )
    if titles["item"].dtype != frame["item"].dtype or titles["title"].dtype != pl.String:
        raise LlamarecError(
            f"Dataset '{spec.name}': read_titles returned items of type {titles['item'].dtype} and titles of type "
            f"{titles['title'].dtype}; the items must be of read_interactions' type ({frame['item'].dtype}) and "
            "the titles strings."
        )
    titles = (
        titles.select("item", pl.col("title").str.strip_chars())
        .filter(pl.col("title") != "")
        .unique(subset="item", keep="last", maintain_order=True)
    )
    titled = superset.join(titles.select("item"), on="item", how="semi")
    frame = _core(titled, k) if titled.height else titled
    if frame.height == 0:
        titled_items = titled["item"].n_unique()
        raise LlamarecError(
            f"Dataset '{spec.name}': nothing survives the {k}-core filter once items without a title are dropped: "
            f"{_sizes(superset)} pass it, but only {titled_items:,} of those {superset['item'].n_unique():,} items "
            f"have a title. Check that the titles file is the one that belongs to these ratings{_where(files)}."
        )

    # Final ids 1..N are the ranks of the original ids in sorted order.
    frame = frame.select(
        "user", "item", exact_codes("user").alias("user_id"), exact_codes("item").alias("item_id"), "timestamp"
    )
    interactions = frame.select(pl.col("user_id").alias("user"), pl.col("item_id").alias("item"), "timestamp").sort(
        "user", "timestamp", "item"
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
    interactions = interactions.with_columns(split.cast(SPLITS).alias("split"))
    items = (
        frame.select(pl.col("item_id").alias("item"), pl.col("item").cast(pl.String).alias("original_id"))
        .unique("item")
        .join(titles.select(pl.col("item").cast(pl.String).alias("original_id"), "title"), on="original_id")
        .sort("item")
    )
    users = (
        frame.select(pl.col("user_id").alias("user"), pl.col("user").cast(pl.String).alias("original_id"))
        .unique("user")
        .sort("user")
    )
    return Tables(interactions, items, users)


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
