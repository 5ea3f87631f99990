"""Readers for the raw formats: MovieLens CSV, Amazon 2014 ratings CSV, Amazon 2014/2018 metadata.

CSV files are read by polars with a strict schema. When polars reports a problem, the file is scanned once more
line by line only to name the first bad line: the slow path runs on errors alone.
"""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import polars as pl

from ..errors import DataFormatError

_PARSERS = {pl.Int64: (int, "an integer"), pl.Float64: (float, "a number"), pl.String: (str, "text")}


def read_csv(path: Path, schema: dict[str, pl.DataType], *, header: bool, what: str) -> pl.DataFrame:
    """Read a CSV whose columns are ``schema`` (in order), naming the file and line of any malformed row.

    Empty text fields read as "" (the caller judges them); an empty number is an error.
    """
    try:
        frame = pl.read_csv(
            path,
            has_header=header,
            new_columns=list(schema),
            schema_overrides=schema,
            infer_schema=False,
            raise_if_empty=False,
            empty_string_is_null=False,
        )
    except pl.exceptions.PolarsError as exc:
        _raise_first_bad_line(path, schema, header, what)
        raise DataFormatError(path, f"cannot be read as {what}: {exc}") from exc
    if frame.height == 0:
        raise DataFormatError(path, f"is empty: it has no {what}")
    if frame.null_count().sum_horizontal().item():
        _raise_first_bad_line(path, schema, header, what)
        raise DataFormatError(path, f"has empty fields where {what} need values")
    return frame


def _raise_first_bad_line(path: Path, schema: dict, header: bool, what: str) -> None:
    names = ", ".join(schema)
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if (header and lineno == 1) or not row:
                continue
            if len(row) != len(schema):
                raise DataFormatError(
                    path,
                    f"expected {len(schema)} fields ({names}) in {what}, found {len(row)}: {','.join(row)!r}",
                    lineno,
                )
            for value, (column, dtype) in zip(row, schema.items()):
                try:
                    if value == "" and dtype != pl.String:
                        raise ValueError
                    _PARSERS[dtype][0](value)
                except ValueError:
                    raise DataFormatError(
                        path, f"field '{column}' should be {_PARSERS[dtype][1]} but is {value!r}", lineno
                    ) from None


# --- MovieLens (ml-latest-small) -----------------------------------------------------------------------------


def read_movielens_ratings(path: Path) -> pl.DataFrame:
    schema = {"user": pl.Int64, "item": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}
    return read_csv(path, schema, header=True, what="ratings").select("user", "item", "timestamp")


_YEAR = r"\s*\((\d{4})\)\s*$"


def read_movielens_titles(path: Path) -> pl.DataFrame:
    """movies.csv (UTF-8) -> item, title, with the reference's title rule.

    "Matrix, The (1999)" -> "The Matrix (1999)": the trailing year is set aside, other parenthesised text is
    dropped, a trailing ", The/A/An" moves to the front, and the year is appended again.
    """
    frame = read_csv(path, {"item": pl.Int64, "title": pl.String, "genres": pl.String}, header=True, what="movies")
    empty = frame.with_row_index("row").filter(pl.col("title").str.strip_chars() == "")
    if empty.height:
        row = empty.row(0, named=True)
        raise DataFormatError(path, f"movie {row['item']} has no title", row["row"] + 2)
    title = pl.col("title").str.strip_chars()
    base = (
        title.str.replace(_YEAR, "")
        .str.replace_all(r"\([^)]*\)", "")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
        .str.replace(r"(?i)^(.*), (the|a|an)$", "${2} ${1}")
    )
    year = title.str.extract(_YEAR, 1)
    pretty = pl.when(year.is_null()).then(base).otherwise(pl.concat_str(base, pl.lit(" ("), year, pl.lit(")")))
    return frame.select("item", pretty.alias("title"))


# --- Amazon ---------------------------------------------------------------------------------------------------


def read_amazon_ratings(path: Path) -> pl.DataFrame:
    """2014 ``ratings_<Category>.csv``: no header; user, asin, rating, unix time."""
    schema = {"user": pl.String, "item": pl.String, "rating": pl.Float64, "timestamp": pl.Int64}
    return read_csv(path, schema, header=False, what="ratings").select("user", "item", "timestamp")


# Reading the asin without parsing the record lets the reader skip the records of items that cannot survive the
# 5-core (``ast.literal_eval`` costs ~100 us a line). In the 2014 metadata the asin is the first key of every record,
# so the anchored pattern is exact; in the 2018 JSON an unescaped '"asin": "' can only be a key, and a line where it
# appears more than once is parsed whole.
_PY_ASIN = r"^\{\s*'asin'\s*:\s*'([^'\\]*)'"
_JSON_ASIN = r'"asin"\s*:\s*"([^"\\]*)"'


def _lines(path: Path) -> pl.DataFrame:
    """One row per line (``lineno`` from 1, ``line``), decompressing gzip; polars does both in native code."""
    try:
        frame = pl.read_csv(
            path,
            has_header=False,
            separator="\x1f",
            quote_char=None,
            new_columns=["line"],
            schema={"line": pl.String},
            raise_if_empty=False,
        )
    except pl.exceptions.PolarsError as exc:
        raise DataFormatError(path, f"cannot be read ({exc}); is it truncated or not the original file?") from exc
    return frame.with_row_index("lineno", offset=1).drop_nulls("line")  # blank lines read as null


def _parse(rows: list[tuple[int, str]], python_literals: bool) -> tuple[list[tuple[str, str]], tuple | None]:
    """The (asin, title) of each titled record, and the first bad line as (lineno, message), if any."""
    parse = ast.literal_eval if python_literals else json.loads
    kind = "Python-literal" if python_literals else "JSON"
    titled = []
    for lineno, line in rows:
        if not line.strip():
            continue
        try:
            record = parse(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            return titled, (lineno, f"not a {kind} record ({exc.__class__.__name__}: {exc})")
        if not isinstance(record, dict) or not isinstance(record.get("asin"), str):
            return titled, (lineno, "record has no 'asin' string")
        title = record.get("title")
        if isinstance(title, str) and title.strip():
            titled.append((record["asin"].strip(), title.strip()))
    return titled, None


def read_amazon_titles(path: Path, needed: set | None, *, python_literals: bool) -> pl.DataFrame:
    """Amazon metadata -> item, title (non-empty titles only, stripped; the last record of an asin wins).

    2014 files hold one Python-literal dict per line (``ast.literal_eval``, never ``eval``); 2018 files are JSON
    lines. Either may be gzipped. With ``needed``, records whose asin is not in it are skipped unparsed.
    """
    lines = _lines(path)
    if not python_literals:
        legacy = lines.filter(pl.col("line").str.starts_with("{'")).head(1)
        if legacy.height:
            raise DataFormatError(
                path,
                "holds Python literals, as the 2014 metadata does; this dataset needs the 2018 metadata "
                "(JSON lines) of the same name",
                legacy["lineno"].item(),
            )
    if needed is not None:
        pattern = _PY_ASIN if python_literals else _JSON_ASIN
        peek = pl.col("line").str.extract(pattern, 1).str.strip_chars()
        keep = peek.is_null() | peek.is_in(pl.Series(list(needed), dtype=pl.String).implode())
        if not python_literals:
            keep |= pl.col("line").str.count_matches(pattern) != 1
        lines = lines.filter(keep)

    titled, error = _parse(lines.rows(), python_literals)
    if error is not None:
        raise DataFormatError(path, error[1], error[0])
    asins = [asin for asin, _ in titled]
    titles = [title for _, title in titled]
    frame = pl.DataFrame({"item": asins, "title": titles}, schema={"item": pl.String, "title": pl.String})
    return frame.unique(subset="item", keep="last", maintain_order=True)
