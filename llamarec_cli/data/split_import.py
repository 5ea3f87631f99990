"""Import a ready split in the LlamaRec JSON form (see shared/README.md): train/val/test/meta/umap/smap.

Ids are kept as they are (1..N), so that results stay comparable with the split's authors'. The split carries no
timestamps; the order of each user's list is the time order.

The structure is checked explicitly, key by key, before anything is converted: every wrong type is reported with
the key (and the user and position) where it stands, rather than coerced (``true`` is not item 1, ``"7"`` not 7)
or left to a converter's message. Valid files take the fast path: whole-collection checks (``set(map(type, ...))``)
that cost a few milliseconds; the slow search for the first culprit runs only once one of them fails.
"""

from __future__ import annotations

import json
from itertools import chain, permutations
from pathlib import Path

import numpy as np
import polars as pl

from ..errors import DataFormatError
from .pipeline import ID, SPLITS, Tables

KEYS = ("train", "val", "test", "meta", "umap", "smap")
SEQUENCES = ("train", "val", "test")
MAX_ID = 2**32 - 1  # ids are stored as UInt32
SHAPES = {
    "train": "an object mapping user ids to lists of item ids",
    "val": "an object mapping user ids to one-item lists",
    "test": "an object mapping user ids to one-item lists",
    "meta": "an object mapping item ids to titles",
    "umap": "an object mapping original user ids to user ids",
    "smap": "an object mapping original item ids to item ids",
}


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """json's object hook: a key given twice would silently lose the first value."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _show(value: object, limit: int = 40) -> str:
    """A value as it reads in the JSON file, shortened."""
    try:
        text = json.dumps(value)  # ASCII: no character of the file can break the message's line
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: object) -> str:
    """The JSON name of a value's type."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _user(key: str) -> str:
    """A user key for a message: as it is when it looks like an id, else quoted and shortened."""
    return key if key.isascii() and key.isdigit() and len(key) <= 20 else _show(key)


def _is_id(value: object) -> bool:
    return type(value) is int and 1 <= value <= MAX_ID  # type(...) is int: bool, float and str are not ids


def _not_utf8(path: Path) -> DataFormatError:
    """Where the file stops being UTF-8 (the decoder's own offset is relative to a buffer)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return DataFormatError(path, f"is not UTF-8 text ({exc.reason} at byte {exc.start:,})", line)
    return DataFormatError(path, "is not UTF-8 text")


MAX_BYTES = 4 * 2**30  # json.load holds about ten times a file's size: a larger split is refused, not swapped to death


def _load(path: Path) -> object:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise DataFormatError(
                path,
                f"is {size / 2**30:.1f} GiB; a split JSON above {MAX_BYTES / 2**30:.0f} GiB is not read (it would "
                "take tens of GiB of memory): preprocess the raw ratings instead",
            )
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_no_duplicates)
    except FileNotFoundError:
        raise DataFormatError(path, "no such file") from None
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise DataFormatError(path, f"not valid JSON ({exc})", line) from None
    except RecursionError:
        raise DataFormatError(path, "is nested too deeply to be a split (a split is three levels deep)") from None
    except _DuplicateKey as exc:
        raise DataFormatError(path, f"key {_show(exc.args[0])} appears twice in one object") from None
    except OSError as exc:
        raise DataFormatError(path, f"cannot be read ({exc.strerror or exc})") from None


def _id_keys(path: Path, key: str, mapping: dict, what: str) -> list[int]:
    """The keys of ``mapping`` as ids; each must be written as a positive integer ("7", not "07" or "7.0")."""
    keys = list(mapping)
    try:
        ids = list(map(int, keys))
        if list(map(str, ids)) == keys and (not ids or 1 <= min(ids) and max(ids) <= MAX_ID):
            return ids
    except ValueError:
        pass
    for k in keys:
        if not (k.isascii() and k.isdigit() and len(k) <= 10 and str(int(k)) == k and 1 <= int(k) <= MAX_ID):
            raise DataFormatError(path, f"'{key}' has the key {_show(k)}: {what} ids must be positive integers")
    raise AssertionError("unreachable")  # pragma: no cover


def _item_lists(path: Path, key: str, lists: dict) -> None:
    """Every value of ``lists`` is a list of item ids (integers from 1, not booleans, floats or strings)."""
    if set(map(type, lists.values())) - {list}:
        user, value = next((u, v) for u, v in lists.items() if type(v) is not list)
        raise DataFormatError(
            path, f"'{key}' must map user ids to lists of item ids: user {user} has {_kind(value)}, {_show(value)}"
        )
    items = list(chain.from_iterable(lists.values()))
    if not items or (set(map(type, items)) == {int} and min(items) >= 1 and max(items) <= MAX_ID):
        return
    for user, values in lists.items():
        for position, item in enumerate(values, start=1):
            if not _is_id(item):
                raise DataFormatError(
                    path,
                    f"'{key}' list of user {user} holds {_show(item)} at position {position}: "
                    f"item ids must be integers from 1 to {MAX_ID:,}",
                )


def _id_values(path: Path, key: str, mapping: dict, what: str) -> dict[int, str]:
    """``{original id: id}`` -> ``{id: original id}``; each id an integer from 1, given to one original id only."""
    values = list(mapping.values())
    if not (set(map(type, values)) <= {int} and (not values or 1 <= min(values) and max(values) <= MAX_ID)):
        original, value = next((k, v) for k, v in mapping.items() if not _is_id(v))
        raise DataFormatError(
            path, f"'{key}' maps {_show(original)} to {_show(value)}: {what} ids must be integers from 1"
        )
    inverse = {v: k for k, v in mapping.items()}
    if len(inverse) != len(mapping):
        seen: dict[int, str] = {}
        for original, value in mapping.items():
            if value in seen:
                raise DataFormatError(
                    path, f"'{key}' maps both {_show(seen[value])} and {_show(original)} to {what} {value}"
                )
            seen[value] = original
    return inverse


def _dense(path: Path, ids: set[int], what: str) -> None:
    if ids != set(range(1, len(ids) + 1)):
        raise DataFormatError(path, f"{what} ids must be 1..{len(ids)} without gaps")


def read_split(path: Path) -> Tables:
    data = _load(path)
    if not isinstance(data, dict) or set(KEYS) - set(data):
        found = (
            f"missing: {', '.join(k for k in KEYS if k not in data)}"
            if isinstance(data, dict)
            else f"found {_kind(data)}"
        )
        raise DataFormatError(path, f"expected an object with keys {', '.join(KEYS)}; {found}")
    for key in KEYS:
        if type(data[key]) is not dict:
            raise DataFormatError(path, f"'{key}' must be {SHAPES[key]}, not {_kind(data[key])}")

    train, val, test = data["train"], data["val"], data["test"]
    users = _id_keys(path, "train", train, "user")
    if not users:
        raise DataFormatError(path, "'train' holds no users: there is nothing to import")
    splits = {"train": train, "val": val, "test": test}
    for a, b in permutations(splits, 2):
        extra = sorted(set(splits[a]) - set(splits[b]), key=str)
        if extra:
            raise DataFormatError(
                path,
                f"users differ between train, val and test: user {_user(extra[0])} is in {a} but not in {b} "
                f"({len(extra)} such users)",
            )
    for key in SEQUENCES:
        _item_lists(path, key, splits[key])
    for split, lists in (("val", val), ("test", test)):
        if set(map(len, lists.values())) - {1}:
            bad = next(u for u, items in lists.items() if len(items) != 1)
            raise DataFormatError(path, f"{split} of user {bad} must hold exactly one item, not {_show(lists[bad])}")
    _dense(path, set(users), "user")

    # Built from flat arrays (a polars List column of Python lists is several times slower): users in id order,
    # each user's items as train + val + test, the last two being validation and test.
    keys = list(train)
    if any(a > b for a, b in zip(users, users[1:])):
        keys = [keys[i] for i in sorted(range(len(users)), key=users.__getitem__)]
    lengths = np.fromiter(map(len, map(train.__getitem__, keys)), dtype=np.int64, count=len(keys)) + 2
    ends = np.cumsum(lengths)
    total = int(ends[-1])
    split = np.zeros(total, dtype=np.uint32)
    split[ends - 1], split[ends - 2] = 2, 1
    sequences = chain.from_iterable(chain.from_iterable((train[u], val[u], test[u]) for u in keys))
    interactions = pl.DataFrame(
        {
            "user": np.repeat(np.fromiter(map(int, keys), dtype=np.uint32, count=len(keys)), lengths),
            "item": np.fromiter(sequences, dtype=np.uint32, count=total),
            "timestamp": pl.repeat(None, total, dtype=pl.Int64, eager=True),
            "split": pl.Series(SPLITS.categories.to_list(), dtype=SPLITS).gather(split),
        },
        schema={"user": ID, "item": ID, "timestamp": pl.Int64, "split": SPLITS},
    )

    used = set(interactions["item"].unique().to_list())
    _dense(path, used, "item")
    meta = dict(zip(_id_keys(path, "meta", data["meta"], "item"), data["meta"].values()))
    if set(map(type, meta.values())) - {str}:
        wrong = next((i, t) for i, t in meta.items() if type(t) is not str)
        raise DataFormatError(path, f"'meta' gives item {wrong[0]} {_kind(wrong[1])}, {_show(wrong[1])}, not a title")
    untitled = sorted(used - {i for i, t in meta.items() if t.strip()})
    if untitled:
        raise DataFormatError(path, f"item {untitled[0]} has no title in 'meta' ({len(untitled)} such items)")
    smap = _id_values(path, "smap", data["smap"], "item")
    umap = _id_values(path, "umap", data["umap"], "user")
    items = pl.DataFrame(
        {
            "item": sorted(used),
            "original_id": [smap.get(i) for i in sorted(used)],
            "title": [meta[i] for i in sorted(used)],
        },
        schema={"item": ID, "original_id": pl.String, "title": pl.String},
    )
    user_table = pl.DataFrame(
        # a user 'umap' leaves out is known by its number: serve-shell --user and serve find users by these ids
        {"user": sorted(users), "original_id": [umap.get(u, str(u)) for u in sorted(users)]},
        schema={"user": ID, "original_id": pl.String},
    )
    return Tables(interactions, items, user_table)
