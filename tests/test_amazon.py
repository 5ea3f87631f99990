"""Amazon 2014/2018 raw formats, on small files written here, checked against every rule of METHOD.md §2."""

from __future__ import annotations

import random

import polars as pl
import pytest
from conftest import write_amazon_ratings, write_meta_2014, write_meta_2018

from llamarec_cli.errors import DataFormatError
from llamarec_cli.stages.preprocess import preprocess

CORE_USERS = ["AZ5", "AB2", "AM9", "AA7", "AQ1"]  # file order differs from sorted order on purpose
CORE_ITEMS = ["B0E", "B0A", "B0D", "B0B", "B0C"]
DAY = 86400


def amazon_rows():
    rows = []
    for u, user in enumerate(CORE_USERS):
        for k, item in enumerate(CORE_ITEMS):
            # the first user rates everything on one day: ties broken by item id
            day = 0 if u == 0 else (k * 7 + u) % 5
            rows.append((user, item, 5.0, 1_400_000_000 + day * DAY))
    # Untitled items: one without a title key, one with an empty title; both popular.
    for user in CORE_USERS:
        rows.append((user, "B0NOTITLE", 4.0, 1_300_000_000))
        rows.append((user, "B0EMPTY", 4.0, 1_300_000_000))
    # User Y has 5 interactions only counting the untitled item: the title filter comes before the 5-core.
    rows += [("AY", i, 3.0, 1_400_000_000) for i in ["B0EMPTY", *CORE_ITEMS[:4]]]
    # A cascade that needs four rounds: Q (4 raters) goes -> W -> R -> V -> S -> X -> T -> Z.
    rows += [(u, "B0Q", 2.0, 1_410_000_000) for u in ["AW", *CORE_USERS[:3]]]
    rows += [("AW", i, 2.0, 1_410_000_000) for i in CORE_ITEMS[:3]]
    for item, user, next_user in (("B0R", "AW", "AV"), ("B0S", "AV", "AX"), ("B0T", "AX", "AZZ")):
        rows += [(u, item, 2.0, 1_420_000_000) for u in [user, next_user, *CORE_USERS[:3]]]
        rows += [(next_user, i, 2.0, 1_420_000_000) for i in CORE_ITEMS[:3]]
    return rows


def meta_records(items=None):
    records = [
        {"asin": i, "title": f"Item {i} &amp; co", "price": 1.5, "categories": [["Beauty"]]}
        for i in CORE_ITEMS + ["B0Q", "B0R", "B0S", "B0T"]
    ]
    records[1]["title"] = "Burt's Bees Lip Balm"  # repr() writes this one in double quotes
    records.append({"asin": "B0NOTITLE", "price": 2.0})
    records.append({"asin": "B0EMPTY", "title": "  "})
    return records


@pytest.fixture
def beauty_raw(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    write_amazon_ratings(folder / "ratings_Beauty.csv", amazon_rows())
    write_meta_2014(folder / "meta_Beauty.json.gz", meta_records())
    return folder


def sequences(dataset):
    items = dict(zip(dataset.items["item"], dataset.items["original_id"]))
    users = dict(zip(dataset.users["user"], dataset.users["original_id"]))
    out = {}
    for row in dataset.interactions.iter_rows(named=True):
        out.setdefault(users[row["user"]], []).append((items[row["item"]], row["split"]))
    return out


def test_title_filter_then_iterative_five_core(beauty_raw, workdir):
    dataset = preprocess("beauty", workdir=workdir, raw_dir=beauty_raw)
    stats = dataset.manifest["statistics"]
    assert (stats["users"], stats["items"], stats["interactions"]) == (5, 5, 25)
    assert set(dataset.users["original_id"]) == set(CORE_USERS)  # AY and the cascade's users are gone
    assert set(dataset.items["original_id"]) == set(CORE_ITEMS)  # untitled items and the cascade's are gone


def test_ids_are_ranks_of_sorted_original_ids(beauty_raw, workdir):
    dataset = preprocess("beauty", workdir=workdir, raw_dir=beauty_raw)
    assert dataset.users["original_id"].to_list() == sorted(CORE_USERS)
    assert dataset.users["user"].to_list() == [1, 2, 3, 4, 5]
    assert dataset.items["original_id"].to_list() == sorted(CORE_ITEMS)
    assert dataset.items["item"].to_list() == [1, 2, 3, 4, 5]


def test_time_order_ties_broken_by_item_id_and_leave_one_out(beauty_raw, workdir):
    dataset = preprocess("beauty", workdir=workdir, raw_dir=beauty_raw)
    seqs = sequences(dataset)
    # AZ5 rated everything on one day: the order is the item id order
    assert seqs["AZ5"] == [
        ("B0A", "train"),
        ("B0B", "train"),
        ("B0C", "train"),
        ("B0D", "val"),
        ("B0E", "test"),
    ]
    rows = {(u, i): t for u, i, _, t in amazon_rows()}
    for user, seq in seqs.items():
        keys = [(rows[(user, item)], item) for item, _ in seq]
        assert keys == sorted(keys)
        assert [s for _, s in seq] == ["train"] * (len(seq) - 2) + ["val", "test"]


def test_titles_kept_as_in_the_metadata_unless_asked(beauty_raw, tmp_path):
    kept = preprocess("beauty", workdir=tmp_path / "a", raw_dir=beauty_raw)
    titles = dict(zip(kept.items["original_id"], kept.items["title"]))
    assert titles["B0E"] == "Item B0E &amp; co" and titles["B0A"] == "Burt's Bees Lip Balm"
    unescaped = preprocess("beauty", workdir=tmp_path / "b", raw_dir=beauty_raw, unescape_titles=True)
    assert "Item B0E & co" in unescaped.items["title"].to_list()


def test_input_row_order_does_not_change_the_artifact(beauty_raw, tmp_path):
    first = preprocess("beauty", workdir=tmp_path / "a", raw_dir=beauty_raw).path
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    rows = amazon_rows()
    random.Random(7).shuffle(rows)
    write_amazon_ratings(shuffled / "ratings_Beauty.csv", rows)
    write_meta_2014(shuffled / "meta_Beauty.json.gz", list(reversed(meta_records())))
    second = preprocess("beauty", workdir=tmp_path / "b", raw_dir=shuffled).path
    for table in ("interactions", "items", "users"):
        assert (first / f"{table}.parquet").read_bytes() == (second / f"{table}.parquet").read_bytes()


def test_decompressed_metadata_is_accepted(beauty_raw, workdir):
    import gzip

    plain = beauty_raw / "meta_Beauty.json"
    plain.write_bytes(gzip.decompress((beauty_raw / "meta_Beauty.json.gz").read_bytes()))
    (beauty_raw / "meta_Beauty.json.gz").unlink()
    assert preprocess("beauty", workdir=workdir, raw_dir=beauty_raw).manifest["statistics"]["interactions"] == 25


def test_metadata_is_parsed_as_literals_never_evaluated(beauty_raw, workdir, tmp_path):
    marker = tmp_path / "pwned"
    evil = f"{{'asin': 'B0A', 'title': __import__('pathlib').Path({str(marker)!r}).touch()}}"
    path = beauty_raw / "meta_Beauty.json.gz"
    write_meta_2014(path, meta_records())
    import gzip

    with gzip.open(path, "at") as f:
        f.write(evil + "\n")
    with pytest.raises(DataFormatError, match=r"meta_Beauty\.json\.gz, line 12: not a Python-literal record"):
        preprocess("beauty", workdir=workdir, raw_dir=beauty_raw)
    assert not marker.exists()


def test_metadata_of_items_that_cannot_survive_is_not_parsed(beauty_raw, workdir):
    import gzip

    with gzip.open(beauty_raw / "meta_Beauty.json.gz", "at") as f:
        f.write("{'asin': 'B0RARE', 'title': this line is never parsed\n")
    assert preprocess("beauty", workdir=workdir, raw_dir=beauty_raw).manifest["statistics"]["items"] == 5


def test_malformed_amazon_ratings_row(beauty_raw, workdir):
    rows = amazon_rows()
    text = "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows[:3]) + "AX,B0A,5.0,yesterday\n"
    (beauty_raw / "ratings_Beauty.csv").write_text(text)
    with pytest.raises(DataFormatError, match=r"ratings_Beauty\.csv, line 4: field 'timestamp' should be an integer"):
        preprocess("beauty", workdir=workdir, raw_dir=beauty_raw)


@pytest.fixture
def games_raw(tmp_path):
    folder = tmp_path / "games-raw"
    folder.mkdir()
    write_amazon_ratings(folder / "ratings_Video_Games.csv", amazon_rows())
    records = [{"category": ["Video Games"], "title": r.get("title", ""), "asin": r["asin"]} for r in meta_records()]
    write_meta_2018(folder / "meta_Video_Games.json.gz", records)
    return folder


def test_games_reads_2018_json_lines_metadata(games_raw, workdir):
    dataset = preprocess("games", workdir=workdir, raw_dir=games_raw)
    assert dataset.manifest["statistics"]["interactions"] == 25
    assert "Burt's Bees Lip Balm" in dataset.items["title"].to_list()


def test_games_refuses_the_2014_metadata(games_raw, workdir):
    write_meta_2014(games_raw / "meta_Video_Games.json.gz", meta_records())
    with pytest.raises(DataFormatError, match="needs the 2018 metadata"):
        preprocess("games", workdir=workdir, raw_dir=games_raw)


def test_artifact_tables_have_the_documented_schema(beauty_raw, workdir):
    dataset = preprocess("beauty", workdir=workdir, raw_dir=beauty_raw)
    assert dataset.interactions.schema == pl.Schema(
        {
            "user": pl.UInt32,
            "item": pl.UInt32,
            "timestamp": pl.Int64,
            "split": pl.Enum(["train", "val", "test"]),
        }
    )
    assert dataset.items.columns == ["item", "original_id", "title"]
    assert dataset.users.columns == ["user", "original_id"]
    assert dataset.sequences("test") == {
        u: [i] for u, i in dataset.interactions.filter(pl.col("split") == "test").select("user", "item").iter_rows()
    }


def test_hash_collisions_fall_back_to_exact_codes(beauty_raw, tmp_path, monkeypatch):
    from llamarec_cli.data import pipeline

    expected = preprocess("beauty", workdir=tmp_path / "a", raw_dir=beauty_raw).path
    # A "hash" with many collisions: the length of the id. Merged codes survive the k-core and must be caught.
    monkeypatch.setattr(pipeline, "hashed_codes", lambda column: pl.col(column).str.len_bytes().cast(pl.UInt32))
    colliding = preprocess("beauty", workdir=tmp_path / "b", raw_dir=beauty_raw).path
    for table in ("interactions", "items", "users"):
        assert (expected / f"{table}.parquet").read_bytes() == (colliding / f"{table}.parquet").read_bytes()
