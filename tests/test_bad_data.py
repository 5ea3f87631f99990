"""Bad input, class by class: each case is one row, and each must give one line that names the file (and where
possible the key, user, position or line) as the project's error, never a traceback or a silent coercion."""

from __future__ import annotations

import json
import re

import pytest
from test_split_import import small_split  # the two-user split, built in one place
from typer.testing import CliRunner

from llamarec_cli.cli import build_app
from llamarec_cli.data.artifact import load_dataset
from llamarec_cli.data.split_import import KEYS, read_split
from llamarec_cli.errors import ArtifactError, DataFormatError, LlamarecError
from llamarec_cli.stages.preprocess import preprocess


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message and "\r" not in message, message
    return message


def cli(*args: str):
    return CliRunner().invoke(build_app(), list(args))


def assert_one_red_line(result, *fragments: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- 1. a k-core that leaves nothing ---------------------------------------------------------------------------------


def write_ml(folder, users: int, items: int, titled: int | None = None):
    """MovieLens raw files: every user rates every item; only the first ``titled`` items are in movies.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{u},{i},4.0,{100 * u + i}\n" for u in range(1, users + 1) for i in range(1, items + 1))
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + rows)
    titled = items if titled is None else titled
    movies = "".join(f"{i},Movie {i},Drama\n" for i in range(1, titled + 1))
    (folder / "movies.csv").write_text("movieId,title,genres\n" + movies)
    return folder


K_CORE_CASES = [
    pytest.param(
        4, 4, None, r"nothing survives the 5-core filter .*the 16 interactions of 4 users and 4 items", id="4x4"
    ),
    pytest.param(5, 4, None, r"nothing survives the 5-core filter .*20 interactions of 5 users and 4 items", id="5x4"),
    pytest.param(
        1, 1, None, r"nothing survives the 5-core filter .*1 interaction of 1 user and 1 item,? leave", id="1x1"
    ),
    pytest.param(
        5, 5, 4, r"once items without a title are dropped: .*only 4 of those 5 items have a title", id="untitled"
    ),
]


@pytest.mark.parametrize(("users", "items", "titled", "message"), K_CORE_CASES)
def test_empty_k_core_says_so_with_the_counts(tmp_path, workdir, users, items, titled, message):
    raw = write_ml(tmp_path / "raw", users, items, titled)
    with pytest.raises(LlamarecError, match=message) as info:
        preprocess("ml-100k", workdir=workdir, raw_dir=raw)
    assert "ml-100k" in one_line(info.value)
    assert str(raw / "ratings.csv") in str(info.value)  # what to check: the files that were read
    assert not (workdir / "ml-100k" / "dataset").exists()


@pytest.mark.parametrize("command", ["preprocess", "pipeline"])
def test_empty_k_core_is_one_line_in_the_cli(tmp_path, workdir, command, monkeypatch):
    # pipeline first checks every stage's options, loading the ranker's tokenizer (a minute's conversion of the
    # default model in a fresh cache): beside the point here, which is its preprocess stage.
    monkeypatch.setattr("llamarec_cli.stages.pipeline._check_before_work", lambda *args, **kwargs: None)
    raw = write_ml(tmp_path / "raw", 4, 4)
    result = cli(command, "ml-100k", "--raw-dir", str(raw), "--workdir", str(workdir))
    assert_one_red_line(result, "nothing survives the 5-core filter", "4 users and 4 items")


# --- 2. split JSON ----------------------------------------------------------------------------------------------------


def changed(path: tuple, value) -> dict:
    """The small split with ``split[path[0]][path[1]]... = value`` (``...`` = delete)."""
    split = small_split()
    target = split
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return split


SPLIT_CASES = [
    # every key: wrong type, missing
    *[
        pytest.param(changed((key,), wrong), rf"'{key}' must be an object .*, not {kind}", id=f"{key}-{kind}")
        for key in KEYS
        for wrong, kind in (([], "a list"), ("x", "a string"), (3, "a number"), (None, "null"), (True, "a boolean"))
    ],
    *[
        pytest.param(changed((key,), ...), f"expected an object with keys .*; missing: {key}$", id=f"{key}-missing")
        for key in KEYS
    ],
    # user keys
    *[
        pytest.param(
            changed(("train", bad), [1]),
            rf"'train' has the key {re.escape(json.dumps(bad)[:30])}[^:]*: user ids",
            id=f"user-key-{bad[:12]}",
        )
        for bad in ("x", "01", "1.0", "-1", "0", " 1", "1_0", "", "٣", "4294967296", "9" * 5000)
    ],
    # item lists and items: each split, each bad value; names the key, the user and the position
    *[
        pytest.param(
            changed((split, "2"), [7] * (position - 1) + [bad] + ([] if split != "train" else [1])),
            rf"'{split}' list of user 2 holds {shown} at position {position}: item ids must be integers",
            id=f"{split}-item-{shown}",
        )
        for split, position in (("train", 2), ("val", 1), ("test", 1))
        for bad, shown in (
            (True, "true"),
            (False, "false"),
            ("abc", '"abc"'),
            ("3", '"3"'),
            (1.5, "1.5"),
            (2.0, "2.0"),
            (None, "null"),
            (0, "0"),
            (-3, "-3"),
            (2**40, str(2**40)),
            (2**70, str(2**70)),
            ([1], r"\[1\]"),
            ({"a": 1}, r"\{\"a\": 1\}"),
        )
    ],
    *[
        pytest.param(
            changed((split, "2"), value), rf"'{split}' must map user ids to lists .*user 2 has", id=f"{split}-{v}"
        )
        for split in ("train", "val", "test")
        for value, v in (("abc", "string"), (3, "number"), (None, "null"), ({"1": 1}, "object"))
    ],
    pytest.param(
        changed(("val", "2"), [4, 5]), "val of user 2 must hold exactly one item, not \\[4, 5\\]", id="val-two"
    ),
    pytest.param(changed(("test", "1"), []), r"test of user 1 must hold exactly one item, not \[\]", id="test-none"),
    pytest.param(changed(("test", "3"), [5]), "user 3 is in test but not in train", id="test-extra-user"),
    pytest.param(changed(("train",), {}), "'train' holds no users", id="train-empty"),
    pytest.param(
        {**small_split(), **{k: {**small_split()[k], "4": [5]} for k in ("train", "val", "test")}},
        "user ids must be 1..3 without gaps",
        id="user-gap",
    ),
    pytest.param(changed(("train", "1"), [1, 2, 9]), "item ids must be 1..6 without gaps", id="item-gap"),
    # meta
    *[
        pytest.param(changed(("meta", key), "T"), rf"'meta' has the key \"{key}\": item ids", id=f"meta-key-{key}")
        for key in ("abc", "1.5", "007")
    ],
    *[
        pytest.param(changed(("meta", "3"), value), rf"'meta' gives item 3 {kind}, .*not a title", id=f"meta-{kind}")
        for value, kind in ((5, "a number"), (None, "null"), (["T"], "a list"), (True, "a boolean"))
    ],
    pytest.param(changed(("meta", "3"), ...), r"item 3 has no title in 'meta'", id="meta-missing-item"),
    pytest.param(changed(("meta", "3"), "  "), r"item 3 has no title in 'meta'", id="meta-blank-title"),
    # umap, smap: values must be ids, one original id each
    *[
        pytest.param(changed((key, original), value), rf"'{key}' maps \"{original}\" to {shown}: ", id=f"{key}-{v}")
        for key, original in (("umap", "A"), ("smap", "S1"))
        for value, shown, v in (("1", '"1"', "string"), (True, "true", "bool"), (1.0, "1.0", "float"), (0, "0", "0"))
    ],
    pytest.param(changed(("umap", "B"), 1), '\'umap\' maps both "A" and "B" to user 1', id="umap-duplicate"),
    pytest.param(changed(("smap", "S2"), 1), '\'smap\' maps both "S1" and "S2" to item 1', id="smap-duplicate"),
]


def write_split(tmp_path, content) -> object:
    path = tmp_path / "bad-split.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


@pytest.mark.parametrize(("content", "message"), SPLIT_CASES)
def test_malformed_split_names_file_and_key(tmp_path, content, message):
    path = write_split(tmp_path, content)
    with pytest.raises(DataFormatError, match=message) as info:
        read_split(path)
    assert one_line(info.value).startswith(f"{path}")
    assert info.value.path == path


DEEP = 100_000
RAW_SPLIT_CASES = [
    pytest.param("[" * DEEP + "]" * DEEP, "nested too deeply", id="deep-list"),
    pytest.param('{"train": ' + "[" * DEEP + "]" * DEEP + "}", "nested too deeply", id="deep-inside"),
    pytest.param('{"a": ' * DEEP + "1" + "}" * DEEP, "nested too deeply", id="deep-object"),
    pytest.param("", "not valid JSON", id="empty-file"),
    pytest.param('{"train": {"1": [1, 2', "not valid JSON", id="truncated"),
    pytest.param('{"train": {},\n oops}', r"line 2: not valid JSON", id="syntax"),
    pytest.param(b'{"train": {}, "meta": {"1": "caf\xe9"}}', r"line 1: is not UTF-8 text", id="latin-1"),
    pytest.param("[1, 2]", "expected an object with keys .*; found a list$", id="top-list"),
    pytest.param("null", "expected an object with keys .*; found null$", id="top-null"),
    pytest.param(
        json.dumps(small_split()).replace('"train": {', '"train": {"2": [1, 2, 3], ', 1),
        'key "2" appears twice in one object',
        id="duplicate-user",
    ),
]


@pytest.mark.parametrize(("content", "message"), RAW_SPLIT_CASES)
def test_unreadable_split_names_the_file(tmp_path, content, message):
    path = write_split(tmp_path, content)
    with pytest.raises(DataFormatError, match=message) as info:
        read_split(path)
    assert one_line(info.value).startswith(f"{path}")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(
            changed(("train", "2"), [3, True, 1]), "'train' list of user 2 holds true at position 2", id="bool"
        ),
        pytest.param(changed(("train",), []), "'train' must be an object", id="list"),
        pytest.param("[" * DEEP + "]" * DEEP, "nested too deeply", id="deep"),
    ],
)
def test_malformed_split_is_one_line_in_the_cli(tmp_path, workdir, content, fragment):
    path = write_split(tmp_path, content)
    result = cli("preprocess", "beauty", "--from-split", str(path), "--workdir", str(workdir))
    assert_one_red_line(result, str(path), fragment)
    assert not (workdir / "beauty" / "dataset").exists()


def test_users_listed_out_of_order_import_in_id_order(tmp_path, workdir):
    split = small_split()
    split["train"] = {"2": [3, 2, 1], "1": [1, 2, 3]}
    dataset = preprocess("beauty", workdir=workdir, from_split=write_split(tmp_path, split))
    assert dataset.sequences("train") == {1: [1, 2, 3], 2: [3, 2, 1]}
    assert dataset.interactions["user"].to_list() == [1] * 5 + [2] * 5
    assert dataset.interactions["split"].to_list() == ["train"] * 3 + ["val", "test"] + ["train"] * 3 + ["val", "test"]
    assert dict(zip(dataset.users["user"], dataset.users["original_id"])) == {1: "A", 2: "B"}


# --- 3. the dataset artifact ------------------------------------------------------------------------------------------


def rewrite_manifest(path, change) -> None:
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def dropped(key):
    return lambda m: m.pop(key)


def set_to(key, value):
    return lambda m: m.__setitem__(key, value)


def file_hash(table, value):
    return lambda m: m["files"].__setitem__(f"{table}.parquet", value)


MANIFEST_CASES = [
    *[
        pytest.param(dropped(key), f"'{key}' is missing", id=f"no-{key}")
        for key in ("files", "format", "format_version")
    ],
    pytest.param(set_to("files", ["a"]), "'files' should be an object", id="files-list"),
    pytest.param(set_to("files", "x"), "'files' should be an object", id="files-string"),
    pytest.param(set_to("files", None), "'files' should be an object", id="files-null"),
    pytest.param(set_to("format_version", "1"), "'format_version' should be an integer", id="version-string"),
    pytest.param(set_to("format_version", True), "'format_version' should be an integer", id="version-bool"),
    pytest.param(set_to("format", 1), "'format' should be a string", id="format-number"),
    pytest.param(set_to("statistics", []), "'statistics' should be an object", id="statistics-list"),
    pytest.param(set_to("config", "x"), "'config' should be an object", id="config-string"),
    pytest.param(set_to("description", 5), "'description' should be a string", id="description-number"),
    pytest.param(set_to("inputs", {}), "'inputs' should be a list", id="inputs-object"),
    *[
        pytest.param(file_hash(table, value), f"'files' gives no SHA-256 for {table}.parquet", id=f"{table}-{v}")
        for table in ("interactions", "items", "users")
        for value, v in ((None, "null"), (5, "number"), ("abc", "short"), ("Z" * 64, "not-hex"))
    ],
    pytest.param(
        lambda m: m["files"].pop("users.parquet"), "'files' gives no SHA-256 for users.parquet", id="no-users"
    ),
    pytest.param(set_to("format_version", 99), "written by an incompatible llamarec version", id="newer-version"),
]


@pytest.mark.parametrize(("change", "message"), MANIFEST_CASES)
def test_malformed_manifest_says_to_rerun_preprocess(chain, workdir, change, message):
    manifest = chain.path / "manifest.json"
    rewrite_manifest(manifest, change)
    with pytest.raises(ArtifactError, match=message) as info:
        load_dataset(workdir, "chain")
    assert str(chain.path) in one_line(info.value)
    assert one_line(info.value).endswith(f"Rerun: llamarec preprocess chain --workdir {workdir}")


MANIFEST_BYTES = [
    pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
    pytest.param(lambda raw: b"", id="empty"),
    pytest.param(lambda raw: b"not json", id="not-json"),
    pytest.param(lambda raw: b"[1, 2]", id="a-list"),
    pytest.param(lambda raw: b"null", id="null"),
    pytest.param(lambda raw: b"\xff\xfe" + raw, id="not-utf8"),
    pytest.param(lambda raw: b"[" * DEEP + b"]" * DEEP, id="deep"),
]


@pytest.mark.parametrize("damage", MANIFEST_BYTES)
def test_unreadable_manifest_says_to_rerun_preprocess(chain, workdir, damage):
    manifest = chain.path / "manifest.json"
    manifest.write_bytes(damage(manifest.read_bytes()))
    with pytest.raises(ArtifactError, match=r"manifest\.json is corrupt") as info:
        load_dataset(workdir, "chain")
    assert one_line(info.value).endswith(f"Rerun: llamarec preprocess chain --workdir {workdir}")


def test_the_command_to_rerun_names_the_workdir_only_where_a_bare_command_would_miss_it(chain, workdir, monkeypatch):
    """A suggested command is copied as it is: without --workdir it would act on ./llamarec-runs."""
    (chain.path / "manifest.json").write_bytes(b"")
    monkeypatch.setenv("LLAMAREC_WORKDIR", str(workdir))
    with pytest.raises(ArtifactError) as info:
        load_dataset(workdir, "chain")
    assert one_line(info.value).endswith("Rerun: llamarec preprocess chain")


def flip_middle_byte(raw: bytes) -> bytes:
    middle = len(raw) // 2
    return raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1 :]


TABLE_DAMAGE = [
    pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
    pytest.param(lambda raw: raw[:-1], id="last-byte-cut"),
    pytest.param(flip_middle_byte, id="flipped-byte"),
    pytest.param(lambda raw: b"", id="empty"),
    pytest.param(lambda raw: raw + b"\0", id="appended"),
]


@pytest.mark.parametrize("table", ["interactions", "items", "users"])
@pytest.mark.parametrize("damage", TABLE_DAMAGE)
def test_damaged_table_is_refused(chain, workdir, table, damage):
    file = chain.path / f"{table}.parquet"
    file.write_bytes(damage(file.read_bytes()))
    with pytest.raises(ArtifactError, match=r"is missing or altered\. Rerun: llamarec preprocess chain") as info:
        load_dataset(workdir, "chain")
    assert str(file) in one_line(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(lambda file: file.write_bytes(b"PAR1 not parquet PAR1"), "cannot be read", id="not-parquet"),
        pytest.param(
            lambda file: __import__("polars").DataFrame({"x": [1]}).write_parquet(file),
            "does not hold the columns of a dataset table",
            id="other-columns",
        ),
    ],
)
def test_table_that_matches_a_forged_hash_is_still_refused(chain, workdir, content, message):
    """Even when the manifest's hash was updated to match, a table that is not one is refused in one line."""
    from llamarec_cli.files import sha256_of

    file = chain.path / "items.parquet"
    content(file)
    rewrite_manifest(chain.path / "manifest.json", file_hash("items", sha256_of(file)))
    with pytest.raises(ArtifactError, match=message) as info:
        load_dataset(workdir, "chain")
    assert str(file) in one_line(info.value)


def test_manifest_without_files_is_one_line_in_the_cli(chain, workdir):
    rewrite_manifest(chain.path / "manifest.json", dropped("files"))
    result = cli("retrieve-train", "chain", "--workdir", str(workdir), "--device", "cpu", "--max-epochs", "1")
    assert_one_red_line(result, "manifest.json is corrupt: 'files' is missing", "Rerun: llamarec preprocess chain")


# --- 4. raw ratings and titles ----------------------------------------------------------------------------------------

GOOD_ROWS = "".join(f"{u},{i},4.0,{100 * u + i}\n" for u in range(1, 6) for i in range(1, 6))  # lines 2..26

RATINGS_CASES = [
    pytest.param(b"6,abc,4.0,1", r"line 27: field 'item' should be an integer but is 'abc'", id="item-text"),
    pytest.param(b"6,1,four,1", r"line 27: field 'rating' should be a number but is 'four'", id="rating-text"),
    pytest.param(b"6,1,4.0,1.5", r"line 27: field 'timestamp' should be an integer but is '1.5'", id="timestamp-float"),
    pytest.param(b"6,1,4.0,1_000", r"line 27: field 'timestamp' should be an integer but is '1_000'", id="underscore"),
    pytest.param(b"6,1,4.0,1 ", r"line 27: field 'timestamp' should be an integer but is '1 '", id="trailing-space"),
    pytest.param(b"6,1,1_0,1", r"line 27: field 'rating' should be a number but is '1_0'", id="rating-underscore"),
    pytest.param(b"99999999999999999999,1,4.0,1", r"line 27: field 'user' should be an integer", id="overflow"),
    pytest.param(b"6,1,4.0,", r"line 27: field 'timestamp' should be an integer but is ''", id="empty-field"),
    pytest.param(b",,,", r"line 27: field 'user' should be an integer but is ''", id="all-empty"),
    pytest.param(b"6,1,4.0", r"line 27: expected 4 fields .* found 3", id="too-few-fields"),
    pytest.param(b"6,1", r"line 27: expected 4 fields .* found 2", id="two-fields"),
    pytest.param(b"6,1,4.0,1,9", r"line 27: expected 4 fields .* found 5", id="too-many-fields"),
    pytest.param(b"6;1;4.0;1", r"line 27: expected 4 fields .* found 1", id="semicolons"),
    pytest.param(
        b'6,"1,4.0,1\n7,1,4.0,1', r"line 27: a quoted field that starts here is never closed", id="open-quote"
    ),
    pytest.param(b'6,1"2,4.0,1', r"line 27: a double quote stands inside an unquoted field", id="stray-quote"),
    pytest.param(b'6,"1"2,4.0,1', r"line 27: is not valid CSV", id="text-after-quote"),
    pytest.param(b"6,\xff1,4.0,1", r"line 27: is not valid UTF-8 text", id="not-utf8"),
    pytest.param(b"6,1,4.0,1\x00", r"line 27: field 'timestamp' should be an integer", id="nul-byte"),
]


@pytest.mark.parametrize(("bad", "message"), RATINGS_CASES)
def test_malformed_movielens_ratings_name_file_and_line(tmp_path, workdir, bad, message):
    raw = write_ml(tmp_path / "raw", 5, 5)
    ratings = raw / "ratings.csv"
    ratings.write_bytes(b"userId,movieId,rating,timestamp\n" + GOOD_ROWS.encode() + bad + b"\n" + b"7,2,4.0,9\n")
    with pytest.raises(DataFormatError, match=message) as info:
        preprocess("ml-100k", workdir=workdir, raw_dir=raw)
    assert one_line(info.value).startswith(f"{ratings}, line ")
    assert info.value.path == ratings


def test_malformed_ratings_line_is_one_line_in_the_cli(tmp_path, workdir):
    raw = write_ml(tmp_path / "raw", 5, 5)
    (raw / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + GOOD_ROWS + "6,1,4.0,1_000\n")
    result = cli("preprocess", "ml-100k", "--raw-dir", str(raw), "--workdir", str(workdir))
    assert_one_red_line(result, f"{raw / 'ratings.csv'}, line 27: field 'timestamp' should be an integer")


@pytest.mark.parametrize("blank", ["\n", "\n\n", "\r\n"])
def test_blank_lines_in_ratings_are_skipped_not_refused(tmp_path, workdir, blank):
    """A blank line (which polars reads as a row of nulls) holds no rating: it is neither an error nor a row."""
    raw = write_ml(tmp_path / "raw", 5, 5)
    rows = GOOD_ROWS.splitlines(keepends=True)
    text = "userId,movieId,rating,timestamp\n" + "".join(rows[:7]) + blank + "".join(rows[7:]) + blank
    (raw / "ratings.csv").write_text(text)
    dataset = preprocess("ml-100k", workdir=workdir, raw_dir=raw)
    assert dataset.manifest["statistics"]["interactions"] == 25


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param(b"x,Title,Drama", r"line 7: field 'item' should be an integer but is 'x'", id="id-text"),
        pytest.param(b"6,Matrix, The (1999),Action", r"line 7: expected 3 fields .* found 4", id="unquoted-comma"),
        pytest.param(
            b'6,"Title, The (1999),Drama', r"line 7: a quoted field that starts here is never closed", id="quote"
        ),
        pytest.param(b"6,Caf\xe9,Drama", r"line 7: is not valid UTF-8 text", id="latin-1"),
    ],
)
def test_malformed_movies_name_file_and_line(tmp_path, workdir, bad, message):
    raw = write_ml(tmp_path / "raw", 5, 5)
    movies = raw / "movies.csv"
    movies.write_bytes(movies.read_bytes() + bad + b"\n")
    with pytest.raises(DataFormatError, match=message) as info:
        preprocess("ml-100k", workdir=workdir, raw_dir=raw)
    assert one_line(info.value).startswith(f"{movies}, line ")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param(b"AX,B0A,5.0,yesterday", r"line 4: field 'timestamp' should be an integer", id="timestamp"),
        pytest.param(b"AX,B0A,five,1", r"line 4: field 'rating' should be a number", id="rating"),
        pytest.param(b"AX,B0A", r"line 4: expected 4 fields .* found 2", id="too-few"),
        pytest.param(b'AX,B0"A,5.0,1', r"line 4: a double quote stands inside an unquoted field", id="stray-quote"),
        pytest.param(b"AX,B0\xffA,5.0,1", r"line 4: is not valid UTF-8 text", id="not-utf8"),
    ],
)
def test_malformed_amazon_ratings_name_file_and_line(tmp_path, bad, message):
    from llamarec_cli.data.readers import read_amazon_ratings

    ratings = tmp_path / "ratings_Beauty.csv"
    ratings.write_bytes(b"A1,B01,5.0,1\nA2,B01,4.0,2\nA3,B02,3.0,3\n" + bad + b"\nA4,B03,5.0,4\n")
    with pytest.raises(DataFormatError, match=message) as info:
        read_amazon_ratings(ratings)
    assert one_line(info.value).startswith(f"{ratings}, line ")


def test_corrupt_member_of_the_zip_archive_names_the_archive(tmp_path, workdir):
    import zipfile

    raw = write_ml(tmp_path / "raw", 5, 5)
    archive = tmp_path / "zipped" / "ml-latest-small.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("ratings.csv", "movies.csv"):
            zf.writestr(f"ml-latest-small/{name}", (raw / name).read_text() * 50)
    data = bytearray(archive.read_bytes())
    for i in range(60, 160):  # inside the first member's compressed data
        data[i] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match="not a valid zip archive") as info:
        preprocess("ml-100k", workdir=workdir, raw_dir=archive.parent)
    assert one_line(info.value).startswith(str(archive))


@pytest.mark.parametrize("python_literals", [True, False], ids=["2014", "2018"])
def test_truncated_gzip_metadata_names_the_file(tmp_path, python_literals):
    import gzip

    from llamarec_cli.data.readers import read_amazon_titles

    record = "{'asin': 'B01', 'title': 'x'}\n" if python_literals else '{"asin": "B01", "title": "x"}\n'
    data = gzip.compress((record * 2000).encode())
    meta = tmp_path / "meta_Beauty.json.gz"
    meta.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="cannot be read .*is it truncated") as info:
        read_amazon_titles(meta, None, python_literals=python_literals)
    assert one_line(info.value).startswith(str(meta))


def test_a_huge_split_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:  # sparse: no disk space, and never read
        f.truncate(5 * 2**30)
    with pytest.raises(DataFormatError, match="is 5.0 GiB; a split JSON above 4 GiB is not read") as info:
        read_split(path)
    assert one_line(info.value).startswith(f"{path}")


@pytest.mark.parametrize(
    "interactions, titles, message",
    [
        (None, None, "read_interactions must return a polars DataFrame with columns user, item, timestamp; got None"),
        ({"user": [1], "item": ["a"]}, None, "read_interactions returned no timestamp column"),
        ({"user": [1, None], "item": ["a", "b"], "timestamp": [1, 2]}, None, "returned rows without a user"),
        ({"user": [1], "item": ["a"], "timestamp": ["2020"]}, None, "returned String timestamps; they must be int"),
        ("ok", {"item": [1, 2], "title": ["A", "B"]}, "read_titles returned items of type Int64"),
        ("ok", {"item": ["a", "b"]}, "read_titles returned no title column"),
    ],
)  # fmt: skip
def test_a_dataset_plugins_bad_table_is_one_line_naming_the_method(workdir, interactions, titles, message):
    """They failed deep in the pipeline (AttributeError, polars errors), or asked to report a llamarec bug."""
    import polars as pl

    from llamarec_cli import DatasetSpec, hookimpl, plugins
    from llamarec_cli.errors import LlamarecError
    from llamarec_cli.stages.preprocess import preprocess

    good = pl.DataFrame(
        [(u, i, u * 10 + n) for u in range(6) for n, i in enumerate("abcdef")],
        schema=["user", "item", "timestamp"],
        orient="row",
    )
    spec = DatasetSpec(
        name="badtables",
        description="a plugin's dataset",
        read_interactions=lambda files: good if interactions == "ok" else (interactions and pl.DataFrame(interactions)),
        read_titles=lambda files, needed: pl.DataFrame(titles or {"item": list("abcdef"), "title": list("ABCDEF")}),
    )

    class Plugin:
        @hookimpl
        def register_datasets(self, register):
            register(spec)

    plugins.register_plugin(Plugin(), name="badtables-plugin")
    try:
        with pytest.raises(LlamarecError, match=f"Dataset 'badtables': .*{message}"):
            preprocess("badtables", workdir=workdir)
    finally:
        plugins.unregister_plugin("badtables-plugin")
