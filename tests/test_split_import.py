"""--from-split: the paper's own Beauty and Games splits, and malformed split files."""

from __future__ import annotations

import json

import pytest
from conftest import shared_path
from typer.testing import CliRunner

from llamarec_cli.cli import build_app
from llamarec_cli.errors import ConfigError, DataFormatError
from llamarec_cli.stages.preprocess import preprocess


@pytest.mark.parametrize(
    ("name", "expected"),
    [("beauty", (22332, 12086, 198215, 8.88)), ("games", (15264, 7676, 147861, 9.69))],
)
def test_reference_split_imports_with_the_papers_statistics(name, expected, workdir):
    split = shared_path("datasets", name, "llamarec-split.json")
    result = CliRunner().invoke(
        build_app(), ["preprocess", name, "--from-split", str(split), "--workdir", str(workdir), "--json"]
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert (stats["users"], stats["items"], stats["interactions"], stats["avg_length"]) == expected


@pytest.mark.parametrize("wrong_name", ["games", "ml-100k"])
def test_a_published_split_under_another_datasets_name_is_refused(wrong_name, workdir):
    split = shared_path("datasets", "beauty", "llamarec-split.json")
    with pytest.raises(
        ConfigError, match=f"published split of 'beauty', not of '{wrong_name}'.*preprocess beauty.* --workdir"
    ):
        preprocess(wrong_name, workdir=workdir, from_split=split)
    assert not (workdir / wrong_name).exists()


def test_a_split_other_than_the_published_one_gets_a_warning(tmp_path, workdir):
    lines = []
    preprocess("games", workdir=workdir, from_split=write(tmp_path, small_split()), log=lines.append)
    assert any("is not the published split of 'games'" in line for line in lines)


def test_import_keeps_ids_order_and_titles(workdir):
    split_path = shared_path("datasets", "beauty", "llamarec-split.json")
    split = json.loads(split_path.read_text())
    dataset = preprocess("beauty", workdir=workdir, from_split=split_path)
    train, val, test = (dataset.sequences(s) for s in ("train", "val", "test"))
    for user in ("1", "17", "22332"):
        assert train[int(user)] == split["train"][user]
        assert val[int(user)] == split["val"][user] and test[int(user)] == split["test"][user]
    titles = dict(zip(dataset.items["item"], dataset.items["title"]))
    assert titles[8028] == split["meta"]["8028"]
    asins = dict(zip(dataset.items["item"], dataset.items["original_id"]))
    assert asins[1] == "B007IVRASY"


def small_split(**changes):
    split = {
        "train": {"1": [1, 2, 3], "2": [3, 2, 1]},
        "val": {"1": [4], "2": [4]},
        "test": {"1": [5], "2": [5]},
        "meta": {str(i): f"Item {i}" for i in range(1, 6)},
        "umap": {"A": 1, "B": 2},
        "smap": {f"S{i}": i for i in range(1, 6)},
    }
    split.update(changes)
    return split


def write(tmp_path, data) -> str:
    path = tmp_path / "split.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_small_split_imports(tmp_path, workdir):
    dataset = preprocess("beauty", workdir=workdir, from_split=write(tmp_path, small_split()))
    assert dataset.sequences("train") == {1: [1, 2, 3], 2: [3, 2, 1]}
    assert dataset.manifest["config"]["source"] == "split"


def test_users_a_umap_leaves_out_are_known_by_their_numbers(tmp_path, workdir):
    """With an empty umap no user had an id: every --user was refused, and the refusal itself failed (None in the
    sample of users it names)."""
    dataset = preprocess("beauty", workdir=workdir, from_split=write(tmp_path, small_split(umap={"A": 1})))
    assert dataset.require_user("A") == 1 and dataset.require_user("2") == 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"test": {"1": [5]}},
            "users differ between train, val and test: user 2 is in train but not in test",
        ),
        ({"val": {"1": [4], "2": [4], "3": [1]}}, "user 3 is in val but not in train"),
        ({"val": {"1": [4], "2": []}}, "val of user 2 must hold exactly one item"),
        ({"meta": {"1": "x"}}, "item 2 has no title in 'meta'"),
        ({"train": {"1": [1, 2, 3], "2": "abc"}}, "must map user ids to lists of item ids"),
    ],
)
def test_malformed_split_is_refused_with_the_reason(tmp_path, workdir, changes, message):
    with pytest.raises(DataFormatError, match=message):
        preprocess("beauty", workdir=workdir, from_split=write(tmp_path, small_split(**changes)))


def test_split_that_is_not_json_names_the_line(tmp_path, workdir):
    with pytest.raises(DataFormatError, match=r"split\.json, line 2: not valid JSON"):
        preprocess("beauty", workdir=workdir, from_split=write(tmp_path, '{"train": {},\n oops}'))


def test_split_without_the_six_keys(tmp_path, workdir):
    with pytest.raises(DataFormatError, match="expected an object with keys train, val, test, meta, umap, smap"):
        preprocess("beauty", workdir=workdir, from_split=write(tmp_path, {"train": {}}))


def test_unescape_titles_applies_to_imported_splits_too(tmp_path, workdir):
    split = small_split(meta={**{str(i): f"Item {i}" for i in range(1, 6)}, "3": "Salt &amp; Pepper"})
    dataset = preprocess("beauty", workdir=workdir, from_split=write(tmp_path, split), unescape_titles=True)
    assert "Salt & Pepper" in dataset.items["title"].to_list()
    assert dataset.manifest["config"]["unescape_titles"] is True
