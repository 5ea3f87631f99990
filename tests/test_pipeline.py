"""The README's main job, `llamarec pipeline`, end to end on ml-100k with the small real model on a reduced budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import shared_path
from typer.testing import CliRunner

from llamarec_cli.cli import build_app

REDUCED = [
    *("--retriever-epochs", "1", "--train-examples", "8", "--val-examples", "4", "--eval-every", "2"),
    *("--batch-size", "2", "--test-examples", "8", "--device", "cpu"),
]


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_reuses_them(smollm2_dir, workdir, monkeypatch):
    monkeypatch.setenv("LLAMAREC_RAW_DIR", str(shared_path("datasets", "ml-latest-small")))
    monkeypatch.setenv("LLAMAREC_CACHE_DIR", str(smollm2_dir.parents[1]))  # the alias, converted once per session
    runner = CliRunner()
    result = runner.invoke(build_app(), ["pipeline", "-w", str(workdir), *REDUCED])
    assert result.exit_code == 0, result.output
    for step in ("1/5 preprocess", "2/5 retrieve-train", "3/5 candidates", "4/5 rank-train", "5/5 evaluate"):
        assert step in result.output
    assert "valid retrieval subset" in result.output and "NDCG@10" in result.output
    report = json.loads((workdir / "ml-100k" / "reports" / "evaluate-default.json").read_text())
    assert report["ranked_users"] == 8 and report["subset_users"] > 8
    manifest = json.loads((workdir / "ml-100k" / "ranker" / "default" / "manifest.json").read_text())
    alpha = manifest["fusion"]["alpha"]  # chosen on all validation users; evaluate shows the fused order beside
    assert set(report["subset"]) == {"retriever", "ranker", f"fused (α={alpha:g})"} and "Fusion: α" in result.output
    assert manifest["model"]["name"] == "smollm2-135m" and manifest["train_examples"] == 8
    assert manifest["config"]["negatives"] == "retrieved"
    tokenizer_letters = manifest["letter_token_ids"]
    assert len(tokenizer_letters) == 20 and len(set(tokenizer_letters)) == 20

    again = runner.invoke(build_app(), ["pipeline", "-w", str(workdir), "--json", *REDUCED])
    assert again.exit_code == 0, again.output
    assert "the ranker exists" in again.output and "checkpoint exists" in again.output
    more = runner.invoke(build_app(), ["pipeline", "-w", str(workdir), "--json", *REDUCED, "--retriever-epochs", "3"])
    assert more.exit_code == 0, more.output  # the retriever is reused, and that is said
    assert "trained with at most 1 epochs; --retriever-epochs 3 does not retrain it" in " ".join(more.output.split())

    other = runner.invoke(build_app(), ["pipeline", "-w", str(workdir), *REDUCED, "--negatives", "random"])
    assert other.exit_code == 1 and "negatives retrieved (now random)" in " ".join(other.output.split())
    assert (workdir / "ml-100k" / "ranker" / "default" / "adapter").is_dir()  # refused, not overwritten

    # Memory: with the whole batch in one forward pass, rank-train kept every prompt's activations for the backward
    # pass (9 GiB at batch 8, 6.7 GiB at batch 4 in fp32); in passes of at most 1,024 tokens batch 16 stays small.
    command = [sys.executable, "-m", "llamarec_cli", "rank-train", "ml-100k", "-w", str(workdir), "--name", "b16"]
    command += ["--model", "smollm2-135m", "--dtype", "fp32", "--batch-size", "16", "--max-train-examples", "16"]
    command += ["--max-val-examples", "2", "--negatives", "retrieved", "--device", "cpu", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode()[-2000:]
    peak_gib = usage.ru_maxrss / 1024**2  # KiB on Linux
    assert peak_gib < 4, f"rank-train at batch 16 peaked at {peak_gib:.1f} GiB"


def test_a_ranker_run_resumed_with_other_settings_gets_advice_the_pipeline_can_follow(chain, workdir, tiny_llama_dir):
    """The pipeline has no --resume or --restart: the stage's own advice ("drop the flags ... or --restart") was
    one the user could not follow."""
    from conftest import fast_config

    from llamarec_cli.errors import ConfigError
    from llamarec_cli.stages.candidates import export_candidates
    from llamarec_cli.stages.pipeline import Budget, run_pipeline
    from llamarec_cli.stages.rank_train import train_ranker
    from llamarec_cli.stages.retrieve_train import train_retriever

    train_retriever("chain", workdir=workdir, device="cpu", flags={"hidden": 16, "val_every": 10, "max_epochs": 2})
    export_candidates("chain", workdir=workdir, device="cpu")
    config = fast_config(tiny_llama_dir, negatives="retrieved")
    train_ranker("chain", workdir=workdir, config=config, device="cpu", stop_after_steps=3)  # interrupted
    budget = Budget(retriever_epochs=2, train_examples=12, val_examples=8, eval_every=2, batch_size=4)
    with pytest.raises(ConfigError, match="interrupted ranker training ran with .*run the pipeline with those"):
        run_pipeline("chain", workdir=workdir, model=str(tiny_llama_dir), budget=budget, device="cpu")


def test_a_folder_with_only_a_tokenizer_is_refused_as_a_model_before_any_stage(workdir, llama2_tokenizer_dir):
    """It used to pass the pipeline's check (the tokenizer loads) and fail after the retriever's training."""
    result = CliRunner().invoke(
        build_app(), ["pipeline", "ml-100k", "-w", str(workdir), "--model", str(llama2_tokenizer_dir), *REDUCED]
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"{llama2_tokenizer_dir} is not a model directory (no config.json)" in " ".join(result.output.split())
    assert not (workdir / "ml-100k").exists()


def test_an_interrupted_pipeline_says_what_running_it_again_keeps(workdir, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("llamarec_cli.stages.pipeline.run_pipeline", interrupted)
    result = CliRunner().invoke(build_app(), ["pipeline", "ml-100k", "-w", str(workdir), *REDUCED])
    assert result.exit_code == 130
    said = " ".join(result.output.split())
    assert "Run the same command again" in said and "continues from its last validation" in said
    assert "before its first validation starts over" in said


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--retriever-epochs", "0", "--retriever-epochs must be at least 1 (got 0)."),  # was "max_epochs must be..."
        ("--train-examples", "0", "--train-examples must be at least 1 (got 0)."),
        ("--val-examples", "-3", "--val-examples must be at least 1 (got -3)."),
        ("--lr", "0", "--lr must be a positive number (got 0.0)."),  # was "lr and clip must be positive, ..."
        ("--lr", "nan", "--lr must be a positive number (got nan)."),
    ],
)
def test_a_bad_budget_is_refused_in_the_pipelines_own_flag_names(workdir, option, value, message):
    result = CliRunner().invoke(build_app(), ["pipeline", "ml-100k", "-w", str(workdir), option, value])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (workdir / "ml-100k").exists()
