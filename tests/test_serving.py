"""serve-shell: the real shell through a pseudo-terminal, the one-shot JSON path, batching, and title matching."""

from __future__ import annotations

import json
import os
import sys

import pexpect
import pytest
import torch
from conftest import fast_config
from typer.testing import CliRunner

from llamarec_cli.cli import build_app
from llamarec_cli.serving.recommender import Recommender, TitleIndex
from llamarec_cli.stages.candidates import export_candidates
from llamarec_cli.stages.retrieve_train import train_retriever


@pytest.fixture
def served(chain, workdir):
    train_retriever("chain", workdir=workdir, device="cpu", flags={"hidden": 16, "val_every": 10, "max_epochs": 3})
    export_candidates("chain", workdir=workdir, device="cpu")
    return workdir


def test_title_matching_is_forgiving_and_says_when_unsure():
    index = TitleIndex(
        {
            1: "Toy Story (1995)",
            2: "Heat (1995)",
            3: "Star Wars: Episode IV (1977)",
            4: "Star Wars: Episode V (1980)",
            5: "Amélie (2001)",
        }
    )
    assert index.match("toy story").item == 1 and index.match("toy story").exact
    assert index.match("AMELIE").item == 5  # case and accents
    typo = index.match("Toy Stroy")
    assert typo.item == 1 and not typo.exact
    unsure = index.match("star wars")
    assert unsure.item is None and {i for i, _ in unsure.suggestions} == {3, 4}
    assert index.match("qqqq zzzz").item is None


def test_batched_requests_score_as_single_ones(served, tiny_llama_dir):
    rec = Recommender("chain", workdir=served, adapter="none", model=str(tiny_llama_dir), device="cpu")
    histories = [[1, 2, 3], list(range(5, 30)), [7]]
    batched = rec.recommend_many(histories, batch_size=3)
    for history, result in zip(histories, batched):
        alone = rec.recommend(history)
        assert [c["item"] for c in alone.candidates] == [c["item"] for c in result.candidates]
        assert [r["item"] for r in alone.ranked] == [r["item"] for r in result.ranked]
        probs = torch.tensor([r["probability"] for r in alone.ranked])
        assert torch.allclose(probs, torch.tensor([r["probability"] for r in result.ranked]), atol=1e-4)
        assert not set(c["item"] for c in result.candidates) & set(history)  # the history is never recommended


def test_one_shot_json(served, tiny_llama_dir):
    runner = CliRunner()
    base = ["serve-shell", "chain", "-w", str(served), "--adapter", "none", "--model", str(tiny_llama_dir)]
    result = runner.invoke(build_app(), [*base, "--user", "u3", "--json", "--top", "5", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["user"] == "u3" and len(data["ranked"]) == 5 and len(data["candidates"]) == 20
    assert abs(sum(r["probability"] for r in data["ranked"])) <= 1.0 and set(data["seconds"]) == {
        "retrieval",
        "ranking",
    }
    result = runner.invoke(build_app(), [*base, "--history", "item 3; Item 4", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [h["title"] for h in json.loads(result.stdout)["history"]] == ["Item 3", "Item 4"]
    result = runner.invoke(build_app(), [*base, "--user", "nobody", "--json"])
    assert result.exit_code == 2 and "No user 'nobody'" in result.output
    result = runner.invoke(
        build_app(), ["serve-shell", "chain", "-w", str(served), "--ranker", "none", "--user", "u3", "--json"]
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["ranked"] is None


def test_the_shell_through_a_terminal(served, tiny_llama_dir, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "LLAMAREC_OFFLINE": "1", "COLUMNS": "120", "TERM": "dumb"}
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "llamarec_cli",
            "serve-shell",
            "chain",
            "-w",
            str(served),
            "--adapter",
            "none",
            "--model",
            str(tiny_llama_dir),
            "--device",
            "cpu",
        ],
        env=env,
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 120),
    )
    seen = []

    def expect(pattern):
        child.expect(pattern)
        seen.append(child.before + str(child.after))

    expect("Type help")
    expect("llamarec> ")
    for line, answer in [
        ("help", "history <title>"),
        ("user u3", "Ranker"),
        ("user nobody", "No user 'nobody'"),
        ("history Item 3; Itme 12", "'Itme 12' → Item 12"),
        ("history Item", "Did you mean"),
        ("history qqq zzz", "No title like 'qqq zzz'"),
        ("top 3", "Showing the top 3"),
        ("fly away", "Unknown command 'fly'"),
    ]:
        child.sendline(line)
        expect(answer)
        expect("llamarec> ")
    child.sendline("user u5")
    expect("ranking [0-9]+ ms")
    expect("llamarec> ")
    child.sendline("quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in "".join(seen)


def test_a_ranker_trained_with_a_templates_dir_is_served_with_it(
    chain_with_candidates, workdir, tiny_llama_dir, tmp_path
):
    from llamarec_cli.errors import UnknownNameError
    from llamarec_cli.ranking.templates import packaged_templates
    from llamarec_cli.stages.rank_train import train_ranker

    mine = tmp_path / "templates"
    mine.mkdir()
    (mine / "mine.toml").write_text(packaged_templates()["plain"].read_text())
    config = fast_config(tiny_llama_dir, template="mine", max_train_examples=4)
    train_ranker("chain", workdir=workdir, config=config, device="cpu", templates_dir=mine)
    with pytest.raises(UnknownNameError, match="mine"):  # its template is nowhere else
        Recommender("chain", workdir=workdir, device="cpu")
    rec = Recommender("chain", workdir=workdir, device="cpu", templates_dir=mine)
    assert rec.recommend([1, 2, 3]).ranked
    runner = CliRunner()
    base = ["serve-shell", "chain", "-w", str(workdir), "--user", "u3", "--json", "--device", "cpu"]
    result = runner.invoke(build_app(), [*base, "--templates-dir", str(mine)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("user", ["3", "03"])
def test_an_internal_number_is_no_users_id(chain, workdir, user):
    """User ids are the dataset's own: "3" (or "03") served internal user 3, another user, when no user 3 existed
    (a MovieLens user filtered out)."""
    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.errors import UnknownUserError

    dataset = load_dataset(workdir, "chain")
    assert dataset.user_id(user) is None and dataset.user_id("u3") is not None
    with pytest.raises(UnknownUserError, match=f"No user '{user}' in chain"):
        dataset.require_user(user)
