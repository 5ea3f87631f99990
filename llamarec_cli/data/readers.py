"""Readers for the raw formats: MovieLens CSV, Amazon 2014 ratings CSV, Amazon 2014/2018 metadata.

CSV files are read by polars with a strict schema. When polars reports a problem, the file is scanned once more
line by line only to name the first bad line: the slow path runs on errors alone.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import polars as pl

from ..errors import DataFormatError

# What polars' CSV parser accepts for each type (checked with polars 2.1: leading blanks allowed, trailing ones not), so
# that the line-by-line scan blames the line polars stumbled on rather than a line it accepted.
_INT = re.compile(r"[ \t]*[+-]?[0-9]+")
_FLOAT = re.compile(r"[ \t]*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE)
_INT64 = range(-(2**63), 2**63)
_KINDS = {pl.Int64: "an integer", pl.Float64: "a number", pl.String: "text"}


def _valid(value: str, dtype) -> bool:
    if dtype == pl.Int64:
        return _INT.fullmatch(value) is not None and len(value) < 40 and int(value) in _INT64
    if dtype == pl.Float64:
        return _FLOAT.fullmatch(value) is not None
    return True


def _short(value: str, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _check_start(path: Path, header: tuple[str, ...] | None) -> None:
    """Refuse, on line 1, a file in UTF-16 or with doubled line ends (polars would misread either with an
    unclear message), and a header other than ``header``: columns are read by position, so a file whose columns
    come in another order would otherwise be read wrong without a word."""
    with open(path, "rb") as f:
        first = f.readline(1 << 16)
    if first.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataFormatError(path, "is UTF-16 text; save it as UTF-8", 1)
    if first.endswith(b"\r\r\n"):  # Windows line endings added twice: polars keeps a \r in the last field
        raise DataFormatError(path, "its lines end in \\r\\r\\n; convert them to plain line ends (e.g. dos2unix)", 1)
    if header is None or not first.strip():  # an empty file is reported as such by read_csv
        return
    found = tuple(name.strip() for name in first.decode("utf-8", "replace").removeprefix("\ufeff").strip().split(","))
    if found != header:
        shown = _short(first.decode("utf-8", "replace").strip(), 80)
        raise DataFormatError(path, f"the header should be {','.join(header)}, found {shown}", 1)


def read_csv(path: Path, schema: dict[str, pl.DataType], *, header: tuple[str, ...] | None, what: str) -> pl.DataFrame:
    """Read a CSV whose columns are ``schema`` (in order), naming the file and line of any malformed row.

    ``header``: the column names line 1 must hold, or None for a file without a header. Empty text fields read
    as "" (the caller judges them); an empty number is an error. Blank lines are skipped.
    """
    _check_start(path, header)
    header_line = header is not None
    try:
        frame = pl.read_csv(
            path,
            has_header=header_line,
            new_columns=list(schema),
            schema_overrides=schema,
            infer_schema=False,
            raise_if_empty=False,
            empty_string_is_null=False,
        )
    except pl.exceptions.PolarsError as exc:
        _raise_first_bad_line(path, schema, header_line, what)
        raise DataFormatError(path, f"cannot be read as {what}: {_first_line(exc)}") from None
    if frame.height and frame.null_count().sum_horizontal().item():
        # polars reads a blank line as a row of nulls (or of "" and nulls): any other null is a bad line.
        blank = _raise_first_bad_line(path, schema, header_line, what)
        numbers = [c for c, dtype in schema.items() if dtype != pl.String] or list(schema)
        kept = frame.drop_nulls(numbers)
        if kept.null_count().sum_horizontal().item() or frame.height - kept.height != blank:
            raise DataFormatError(path, f"has empty fields where {what} need values")
        frame = kept
    if frame.height == 0:
        raise DataFormatError(path, f"is empty: it has no {what}")
    return frame


def _first_line(exc: Exception) -> str:
    """polars' messages run over several lines of advice that does not apply here: keep the first."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else exc.__class__.__name__


class _Lines:
    """The lines of a file, keeping those of the current record (a quoted field may hold line breaks)."""

    def __init__(self, file):
        self.file, self.record = file, []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.file)
        self.record.append(line)
        return line


def _stray_quote(record: str) -> bool:
    """Whether a double quote stands inside an unquoted field (polars refuses it; the csv module keeps it)."""
    in_quotes = closed = False
    field_start = True
    for ch in record:
        if in_quotes:
            in_quotes, closed = ch != '"', ch == '"'
        elif ch == '"' and (field_start or closed):
            in_quotes, closed, field_start = True, False, False
        elif ch == '"':
            return True
        else:
            field_start, closed = ch == ",", False
    return False


_CSV_ERRORS = {"unexpected end of data": "a quoted field that starts here is never closed"}


def _raise_first_bad_line(path: Path, schema: dict, header: bool, what: str) -> int:
    """Raise a DataFormatError for the first malformed line of ``path``; if there is none, return the number of
    blank lines (polars reads each as a row of nulls). The slow path: it runs only after polars found a problem."""
    names = ", ".join(schema)
    blank = end = 0
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        lines = _Lines(f)
        reader = csv.reader(lines, strict=True)
        while True:
            start, lines.record = end + 1, []
            try:
                row = next(reader)
            except StopIteration:
                return blank
            except csv.Error as exc:
                reason = _CSV_ERRORS.get(str(exc), f"is not valid CSV ({exc})")
                raise DataFormatError(path, reason, start) from None
            end = reader.line_num
            if header and start == 1:
                continue
            if not row:
                blank += 1
                continue
            record = "".join(lines.record)
            try:
                record.encode("utf-8")
            except UnicodeEncodeError:
                raise DataFormatError(path, "is not valid UTF-8 text", start) from None
            if '"' in record and _stray_quote(record):
                raise DataFormatError(path, f"a double quote stands inside an unquoted field: {_short(record)}", start)
            spans = f" (a quoted field runs on to line {end})" if end > start else ""
            if len(row) != len(schema):
                shown = _short(",".join(row), 80)
                raise DataFormatError(
                    path, f"expected {len(schema)} fields ({names}) in {what}, found {len(row)}: {shown}{spans}", start
                )
            for value, (column, dtype) in zip(row, schema.items()):
                if not _valid(value, dtype):
                    raise DataFormatError(
                        path, f"field '{column}' should be {_KINDS[dtype]} but is {_short(value)}{spans}", start
                    )


# --- MovieLens (ml-latest-small) -----------------------------------------------------------------------------


RATINGS_HEADER = ("userId", "movieId", "rating", "timestamp")
MOVIES_HEADER = ("movieId", "title", "genres")


def _refuse_repeats(frame: pl.DataFrame, keys: list[str], path: Path, what) -> None:
    """MovieLens lists each movie, and each user's rating of a movie, once: a repeated row (a file appended to twice,
    an edited copy) would silently replace a title or count an interaction twice. ``what(row)``: the repeated thing."""
    repeated = frame.with_row_index("row").filter(pl.struct(keys).is_duplicated())
    if repeated.height:
        first = repeated.row(0, named=True)
        lines = repeated.filter(pl.all_horizontal(pl.col(k) == first[k] for k in keys))["row"].to_list()
        raise DataFormatError(path, f"{what(first)} again (first on line {lines[0] + 2}): keep one", lines[1] + 2)


def read_movielens_ratings(path: Path) -> pl.DataFrame:
    schema = {"user": pl.Int64, "item": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}
    frame = read_csv(path, schema, header=RATINGS_HEADER, what="ratings")
    _refuse_repeats(frame, ["user", "item"], path, lambda r: f"user {r['user']}'s rating of movie {r['item']}")
    return frame.select("user", "item", "timestamp")


_YEAR = r"\s*\((\d{4})\)\s*$"


def read_movielens_titles(path: Path) -> pl.DataFrame:
    """movies.csv (UTF-8) -> item, title, with the reference's title rule.

    "Matrix, The (1999)" -> "The Matrix (1999)": the trailing year is set aside, other parenthesised text is
    dropped, a trailing ", The/A/An" moves to the front, and the year is appended again.
    """
    schema = {"item": pl.Int64, "title": pl.String, "genres": pl.String}
    frame = read_csv(path, schema, header=MOVIES_HEADER, what="movies")
    _refuse_repeats(frame, ["item"], path, lambda r: f"movie {r['item']}")
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
    return read_csv(path, schema, header=None, what="ratings").select("user", "item", "timestamp")


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
    except (pl.exceptions.PolarsError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the machine's error (no such file, no permission), not the content's
        reason = f"cannot be read ({_first_line(exc)}); is it truncated or not the original file?"
        raise DataFormatError(path, reason) from exc
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
