"""ml-100k (MovieLens ml-latest-small): the paper's figures from the real files, the title rule, and bad input."""

from __future__ import annotations

import json
import zipfile

import polars as pl
import pytest
from conftest import shared_path
from typer.testing import CliRunner

from llamarec_cli.cli import build_app
from llamarec_cli.data.readers import read_movielens_titles
from llamarec_cli.errors import DataFormatError, RawDataMissingError
from llamarec_cli.stages.preprocess import preprocess

ML_FILES = ("ratings.csv", "movies.csv")


def test_real_ml_latest_small_gives_the_papers_statistics(workdir):
    raw = shared_path("datasets", "ml-latest-small")
    result = CliRunner().invoke(
        build_app(), ["preprocess", "ml-100k", "--raw-dir", str(raw), "--workdir", str(workdir), "--json"]
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert (stats["users"], stats["items"], stats["interactions"]) == (610, 3650, 90274)
    assert f"{stats['avg_length']:.2f}" == "147.99"

    dataset = json.loads((workdir / "ml-100k" / "dataset" / "manifest.json").read_text())
    assert dataset["statistics"] == {k: stats[k] for k in dataset["statistics"]}
    assert {i["name"]: i["sha256"][:8] for i in dataset["inputs"]} == {
        "ratings.csv": "aa289ca8",
        "movies.csv": "5a5f32dd",
    }


def test_real_titles_are_read_as_utf8_and_rewritten(workdir):
    raw = shared_path("datasets", "ml-latest-small")
    dataset = preprocess("ml-100k", workdir=workdir, raw_dir=raw)
    titles = dict(zip(dataset.items["original_id"], dataset.items["title"]))
    assert titles["2571"] == "The Matrix (1999)"
    assert titles["1"] == "Toy Story (1995)"
    assert titles["4973"] == "Amelie (2001)"  # "Amelie (Fabuleux destin d'Amélie Poulain, Le) (2001)"
    assert not any("Ã" in t for t in titles.values()), "mojibake: movies.csv must be read as UTF-8"
    assert any("é" in t for t in titles.values())


def test_preprocessing_twice_gives_byte_identical_artifacts(tmp_path):
    raw = shared_path("datasets", "ml-latest-small")
    paths = [preprocess("ml-100k", workdir=tmp_path / name, raw_dir=raw).path for name in ("a", "b")]
    for file in ("interactions.parquet", "items.parquet", "users.parquet", "manifest.json"):
        assert (paths[0] / file).read_bytes() == (paths[1] / file).read_bytes(), file


def test_the_original_zip_archive_is_accepted(tmp_path, workdir):
    raw = shared_path("datasets", "ml-latest-small")
    folder = tmp_path / "downloads"
    folder.mkdir()
    with zipfile.ZipFile(folder / "ml-latest-small.zip", "w") as zf:
        for name in ML_FILES:
            zf.write(raw / name, f"ml-latest-small/{name}")
    dataset = preprocess("ml-100k", workdir=workdir, raw_dir=folder)
    assert dataset.manifest["statistics"]["interactions"] == 90274


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Matrix, The (1999)", "The Matrix (1999)"),
        (
            "Good, the Bad and the Ugly, The (Buono, il brutto, il cattivo, Il) (1966)",
            "The Good, the Bad and the Ugly (1966)",
        ),
        ("American President, The (1995)", "The American President (1995)"),
        ("Man for All Seasons, A (1966)", "A Man for All Seasons (1966)"),
        ("Ready Player One", "Ready Player One"),  # no year: nothing appended
        ("Heat (1995)", "Heat (1995)"),
        (
            "Death Note: Desu nôto (2006–2007)",
            "Death Note: Desu nôto",
        ),  # not a plain year: dropped like any (…)
    ],
)
def test_movie_title_rule(tmp_path, raw, expected):
    path = tmp_path / "movies.csv"
    pl.DataFrame({"movieId": [1], "title": [raw], "genres": ["Drama"]}).write_csv(path)
    assert read_movielens_titles(path)["title"].to_list() == [expected]


def write_ml(folder, ratings: str, movies: str):
    folder.mkdir(exist_ok=True)
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + ratings)
    (folder / "movies.csv").write_text("movieId,title,genres\n" + movies)
    return folder


def small_ratings(users=5, items=5):
    return "".join(f"{u},{i},4.0,{100 * u + i}\n" for u in range(1, users + 1) for i in range(1, items + 1))


def small_movies(items=5):
    return "".join(f'{i},"Movie {i}, The (2000)",Drama\n' for i in range(1, items + 1))


def test_malformed_ratings_row_names_file_and_line(tmp_path, workdir):
    folder = write_ml(tmp_path / "raw", small_ratings() + "6,abc,4.0,1\n", small_movies())
    with pytest.raises(DataFormatError, match=r"ratings\.csv, line 27: field 'item' should be an integer but is 'abc'"):
        preprocess("ml-100k", workdir=workdir, raw_dir=folder)


def test_ratings_row_with_missing_field_names_the_line(tmp_path, workdir):
    folder = write_ml(tmp_path / "raw", "1,1,4.0\n" + small_ratings(), small_movies())
    with pytest.raises(DataFormatError, match=r"ratings\.csv, line 2: expected 4 fields .* found 3"):
        preprocess("ml-100k", workdir=workdir, raw_dir=folder)


def test_movie_without_a_title_is_refused(tmp_path, workdir):
    folder = write_ml(tmp_path / "raw", small_ratings(), small_movies(3) + "4,,Drama\n" + '5,"Five (2001)",Drama\n')
    with pytest.raises(DataFormatError, match=r"movies\.csv, line 5: movie 4 has no title"):
        preprocess("ml-100k", workdir=workdir, raw_dir=folder)


@pytest.mark.parametrize(
    "ratings, movies, message",
    [
        (small_ratings() + "1,1,4.0,1\n", small_movies(), r"ratings\.csv, line 27: user 1's rating of movie 1 again"),
        (small_ratings(), small_movies() + "1,Duplicate,Comedy\n", r"movies\.csv, line 7: movie 1 again"),
    ],
)  # fmt: skip
def test_a_repeated_movie_or_rating_is_refused_with_both_lines(tmp_path, workdir, ratings, movies, message):
    """A repeated movie silently replaced its title; a repeated rating counted twice."""
    folder = write_ml(tmp_path / "raw", ratings, movies)
    with pytest.raises(DataFormatError, match=message + r" \(first on line 2\): keep one"):
        preprocess("ml-100k", workdir=workdir, raw_dir=folder)


@pytest.mark.parametrize("content", ["", "userId,movieId,rating,timestamp\n"])
def test_empty_ratings_file_is_refused(tmp_path, workdir, content):
    folder = write_ml(tmp_path / "raw", "", small_movies())
    (folder / "ratings.csv").write_text(content)
    with pytest.raises(DataFormatError, match=r"ratings\.csv: is empty: it has no ratings"):
        preprocess("ml-100k", workdir=workdir, raw_dir=folder)


@pytest.mark.parametrize(
    "name, first_line",
    [
        ("ratings.csv", "movieId,userId,rating,timestamp"),  # columns read by position: swapped would be silent
        ("ratings.csv", "1,1,4.0,100"),  # no header: its first rating would be dropped
        ("movies.csv", "title,movieId,genres"),
    ],
)
def test_a_header_other_than_movielens_is_refused_on_line_1(tmp_path, workdir, name, first_line):
    folder = write_ml(tmp_path / "raw", small_ratings(), small_movies())
    body = (folder / name).read_text().split("\n", 1)[1]
    (folder / name).write_text(first_line + "\n" + body)
    with pytest.raises(DataFormatError, match=rf"{name}, line 1: the header should be .*, found '{first_line}'"):
        preprocess("ml-100k", workdir=workdir, raw_dir=folder)


def test_utf16_and_doubled_line_ends_are_named_on_line_1(tmp_path, workdir):
    folder = write_ml(tmp_path / "raw", small_ratings(), small_movies())
    movies = (folder / "movies.csv").read_text()
    (folder / "movies.csv").write_bytes(movies.encode("utf-16"))
    with pytest.raises(DataFormatError, match=r"movies\.csv, line 1: is UTF-16 text; save it as UTF-8"):
        preprocess("ml-100k", workdir=workdir, raw_dir=folder)
    (folder / "movies.csv").write_bytes(movies.replace("\n", "\r\r\n").encode())
    with pytest.raises(DataFormatError, match=r"movies\.csv, line 1: its lines end in"):
        preprocess("ml-100k", workdir=workdir, raw_dir=folder)
    (folder / "movies.csv").write_bytes(movies.replace("\n", "\r\n").encode())  # Windows line ends are fine
    assert preprocess("ml-100k", workdir=workdir, raw_dir=folder).manifest["statistics"]["interactions"] == 25


def test_missing_raw_files_offline_names_the_files_and_where_to_put_them(tmp_path, workdir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RawDataMissingError) as info:
        preprocess("ml-100k", workdir=workdir, raw_dir=tmp_path / "empty")
    message = str(info.value)
    assert "ml-latest-small.zip (or its ratings.csv and movies.csv)" in message
    assert str(tmp_path / "empty") in message and "--raw-dir" in message and "LLAMAREC_RAW_DIR" in message


def test_changed_release_gets_a_warning_not_silence(tmp_path, workdir, capsys):
    folder = write_ml(tmp_path / "raw", small_ratings(), small_movies())
    dataset = preprocess("ml-100k", workdir=workdir, raw_dir=str(folder))  # a library caller may pass a string
    assert dataset.manifest["statistics"]["interactions"] == 25
    assert "differs from the pinned release" in capsys.readouterr().err
