"""retrieve-train and candidates: training that learns, exact determinism and resume, the checkpoint's refusals."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from llamarec_cli.artifacts import seal
from llamarec_cli.cli import build_app
from llamarec_cli.errors import ArtifactError, UnknownNameError
from llamarec_cli.retrieval.checkpoint import partial_dir, retriever_dir
from llamarec_cli.retrieval.contract import ConfigError, parse_value
from llamarec_cli.retrieval.data import eval_set, pad_left, training_windows
from llamarec_cli.retrieval.lru import LRURec, LRURecConfig
from llamarec_cli.stages.candidates import candidates_paths, export_candidates, load_candidates
from llamarec_cli.stages.retrieve_train import resolve_config, retriever_class, train_retriever

FAST = {"hidden": 16, "val_every": 10, "patience": 3, "max_epochs": 12}


def train(workdir, **kwargs):
    return train_retriever("chain", workdir=workdir, device="cpu", flags=kwargs.pop("flags", FAST), **kwargs)


def weights(workdir, name="lrurec"):
    return load_file(retriever_dir(workdir, "chain", name) / "model.safetensors")


def test_training_windows_cover_every_label_once():
    seq = list(range(1, 12))  # 11 items, max_len 4: windows of 5 from the end, stepping by 4
    assert training_windows([seq], 4) == [[7, 8, 9, 10, 11], [3, 4, 5, 6, 7], [0, 1, 2, 3]]
    labels = [x for w in training_windows([seq], 4) for x in w[1:]]
    assert labels == [8, 9, 10, 11, 4, 5, 6, 7, 1, 2, 3]  # the first item too: it has room after a padding input
    assert training_windows([[1, 2, 3, 4, 5]], 4) == [[1, 2, 3, 4, 5]]  # four inputs fill the window
    assert training_windows([[5]], 4) == []  # nothing to predict
    assert pad_left([[1, 2], [3]]).tolist() == [[1, 2], [0, 3]]


def test_a_windows_loss_does_not_depend_on_its_batch():
    """Left padding to the batch's longest window must not add or drop labels of the shorter ones."""
    torch.manual_seed(0)
    model = LRURec(LRURecConfig(hidden=8), num_items=20).eval()
    short, long = training_windows([[3, 4, 5], list(range(1, 9))], 8)
    with torch.no_grad():
        alone = [model.loss(pad_left([w])) * (len(w) - 1) for w in (short, long)]
        together = model.loss(pad_left([short, long])) * (len(short) - 1 + len(long) - 1)
    assert torch.allclose(sum(alone), together, atol=1e-5)


def test_eval_inputs_follow_the_split(chain):
    train_seq, val_seq, test_seq = (chain.sequences(s) for s in ("train", "val", "test"))
    val, test = eval_set(chain, "val"), eval_set(chain, "test")
    user = val.users[0]
    assert val.histories[0] == train_seq[user] and val.targets[0] == val_seq[user][0]
    assert test.histories[test.users.index(user)] == train_seq[user] + val_seq[user]
    assert test.targets[test.users.index(user)] == test_seq[user][0]


def test_training_learns_the_pattern_and_writes_a_complete_checkpoint(chain, workdir):
    manifest = train(workdir)
    folder = retriever_dir(workdir, "chain", "lrurec")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "manifest.json"}
    assert not partial_dir(workdir, "chain", "lrurec").exists()
    test = manifest["metrics"]["test"]
    assert set(test) == {f"{m}@{k}" for m in ("MRR", "NDCG", "Recall") for k in (5, 10, 20)}
    # The next item is always last + 1: a trained model finds it; chance over 40 items would be about 0.25.
    assert test["Recall@10"] > 0.9, test
    assert manifest["dataset"]["checksum"] == chain.checksum and manifest["num_items"] == 40
    assert manifest["config"]["max_len"] == 20 and manifest["config_sources"]["max_len"] == "dataset"
    assert manifest["config_sources"]["hidden"] == "flag"
    assert manifest["training"]["validations"][0]["step"] == 10


def test_same_seed_same_data_gives_identical_runs(chain, workdir, tmp_path):
    first = train(workdir)
    (workdir / "chain" / "retriever").rename(tmp_path / "first")
    second = train(workdir)
    assert first["metrics"] == second["metrics"]
    assert first["training"]["validations"] == second["training"]["validations"]
    first_weights = load_file(tmp_path / "first" / "lrurec" / "model.safetensors")
    assert all(torch.equal(v, weights(workdir)[k]) for k, v in first_weights.items())


def test_resume_continues_exactly_where_it_stopped(chain, workdir):
    whole = train(workdir)
    whole_weights = weights(workdir)
    assert train(workdir, stop_after_steps=25) == {}  # "interrupted" between the validations at 20 and 30
    with pytest.raises(ArtifactError, match="--resume"):
        train(workdir)  # an interrupted run is neither lost nor silently mixed with a new one
    with pytest.raises(ArtifactError, match="lr=0.001"):
        train(workdir, flags={**FAST, "lr": 0.01}, resume=True)
    resumed = train(workdir, resume=True)
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["training"]["steps"] == whole["training"]["steps"]
    assert all(torch.equal(v, weights(workdir)[k]) for k, v in whole_weights.items())


def test_interrupted_run_keeps_the_previous_checkpoint(chain, workdir):
    train(workdir)
    before = weights(workdir)
    train(workdir, flags={**FAST, "seed": 7}, restart=True, stop_after_steps=5)
    assert all(torch.equal(v, weights(workdir)[k]) for k, v in before.items())
    export_candidates("chain", workdir=workdir, device="cpu")  # still usable


@pytest.mark.parametrize(
    "damage", [lambda raw: raw[: len(raw) // 2], lambda raw: raw.replace(b"counters", b"kounters")]
)
def test_a_damaged_resume_state_says_to_restart(chain, workdir, damage):
    from llamarec_cli.layout import Workdir
    from llamarec_cli.retrieval.checkpoint import partial_dir

    train(workdir, stop_after_steps=15)  # past the first validation: resumable
    state = next(Workdir.training(partial_dir(workdir, "chain", "lrurec")).glob("*.safetensors"))
    state.write_bytes(damage(state.read_bytes()))
    with pytest.raises(ArtifactError, match="cannot be resumed: .* the same command with --restart instead"):
        train(workdir, resume=True)
    assert train(workdir, restart=True)["training"]["steps"] > 0


def test_user_flags_beat_dataset_and_retriever_defaults(monkeypatch):
    cls = retriever_class("lrurec")
    config, sources = resolve_config(cls, "ml-100k", {})
    assert (config.batch_size, config.max_len) == (16, 200) and sources["batch_size"] == "dataset"
    config, sources = resolve_config(cls, "beauty", {})  # the grid's choice for beauty and games
    assert (config.batch_size, config.max_len, config.dropout) == (64, 50, 0.5) and sources["dropout"] == "retriever"
    config, sources = resolve_config(cls, "games", {})
    assert config.dropout == 0.5 and sources["dropout"] == "retriever"
    assert resolve_config(cls, "ml-100k", {})[0].dropout == 0.5
    assert resolve_config(cls, "my-plugin-dataset", {})[0].dropout == 0.2  # METHOD.md's, for any other dataset
    assert resolve_config(cls, "games", {"dropout": 0.1})[0].dropout == 0.1
    monkeypatch.setattr(cls, "dataset_defaults", {"beauty": {"dropout": 0.3, "batch_size": 32}})
    config, sources = resolve_config(cls, "beauty", {"batch_size": 8})
    assert (config.batch_size, config.dropout) == (8, 0.3)
    assert sources["batch_size"] == "flag" and sources["dropout"] == "retriever" and sources["lr"] == "default"
    with pytest.raises(ConfigError, match="No setting 'heads'.*hidden"):
        resolve_config(cls, "beauty", {"heads": 2})
    with pytest.raises(ConfigError, match="dropout"):
        resolve_config(cls, "beauty", {"dropout": 1.5})


def test_set_values_are_typed():
    assert parse_value(LRURecConfig, "hidden", "32") == 32
    assert parse_value(LRURecConfig, "lr", "3e-4") == 3e-4
    with pytest.raises(ConfigError, match="Setting 'hidden' needs a whole number"):
        parse_value(LRURecConfig, "hidden", "big")
    with pytest.raises(ConfigError, match="No setting 'hiden'. Did you mean 'hidden'\\? Known settings"):
        parse_value(LRURecConfig, "hiden", "32")


def test_candidates_are_top_k_unseen_items_in_score_order(chain, workdir):
    train(workdir)
    manifest = export_candidates("chain", workdir=workdir, k=5, device="cpu")
    frame, loaded = load_candidates(workdir, chain)
    assert loaded == manifest
    train_seq, val_seq = chain.sequences("train"), chain.sequences("val")
    for row in frame.iter_rows(named=True):
        history = train_seq[row["user"]] + (val_seq[row["user"]] if row["split"] == "test" else [])
        assert len(row["candidates"]) == 5 and not set(row["candidates"]) & set(history)
        assert row["scores"] == sorted(row["scores"], reverse=True)
        assert row["hit"] == (row["target"] in row["candidates"])
    for split in ("val", "test"):
        part = frame.filter(pl.col("split") == split)
        assert manifest["splits"][split]["users"] == part.height == chain.users.height
        assert manifest["splits"][split]["hit_rate"] == pytest.approx(part["hit"].mean())
        assert manifest["splits"][split]["Recall@5"] == pytest.approx(part["hit"].mean())  # no ties here


def test_candidates_before_training_says_what_to_run(chain, workdir):
    with pytest.raises(ArtifactError, match="Run first: llamarec retrieve-train chain --retriever lrurec"):
        export_candidates("chain", workdir=workdir, device="cpu")


def test_checkpoint_of_another_dataset_version_is_refused(chain, workdir):
    train(workdir)
    manifest_path = retriever_dir(workdir, "chain", "lrurec") / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["dataset"]["checksum"] = "0" * 64
    manifest_path.write_text(json.dumps(seal(manifest)))  # sealed anew: the dataset check, not the seal, refuses it
    with pytest.raises(ArtifactError, match="another version of dataset 'chain'.*Rerun: llamarec retrieve-train"):
        export_candidates("chain", workdir=workdir, device="cpu")


def test_corrupted_or_truncated_checkpoint_is_a_clear_error(chain, workdir):
    train(workdir)
    path = retriever_dir(workdir, "chain", "lrurec") / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="corrupted or truncated.*Rerun: llamarec retrieve-train chain"):
        export_candidates("chain", workdir=workdir, device="cpu")


def test_stale_candidates_are_refused(chain, workdir):
    train(workdir)
    export_candidates("chain", workdir=workdir, device="cpu")
    train(workdir, flags={**FAST, "seed": 1})
    with pytest.raises(ArtifactError, match="earlier training.*Rerun: llamarec candidates chain"):
        load_candidates(workdir, chain)


def test_unknown_retriever_lists_the_known_ones(chain, workdir):
    with pytest.raises(UnknownNameError, match="Unknown retriever 'lru'. Known retrievers: .*lrurec"):
        train_retriever("chain", workdir=workdir, retriever="lru")


def test_cli_trains_and_exports_with_json_output(chain, workdir):
    runner = CliRunner()
    app = build_app()
    args = ["--workdir", str(workdir), "--set", "hidden=16", "--max-epochs", "3", "--val-every", "10"]
    result = runner.invoke(app, ["retrieve-train", "chain", *args, "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["config"]["hidden"] == 16 and manifest["config_sources"]["max_epochs"] == "flag"
    result = runner.invoke(app, ["candidates", "chain", "--workdir", str(workdir), "--k", "40"])  # 40 items
    assert result.exit_code == 2 and "--k 40 is not below the 40 items of chain" in result.output
    result = runner.invoke(app, ["candidates", "chain", "--workdir", str(workdir), "--k", "3"])
    assert result.exit_code == 0, result.output
    assert "HitRate" in result.stdout and "users have their item among the candidates" in result.stderr
    result = runner.invoke(app, ["candidates", "chain", "--workdir", str(workdir), "-r", "nope"])
    assert result.exit_code == 2 and "Unknown retriever 'nope'. Known retrievers:" in result.output
    result = runner.invoke(app, ["retrieve-train", "chain", "--workdir", str(workdir), "--show-config"])
    assert result.exit_code == 0 and "max_len" in result.stdout and "dataset" in result.stdout
    result = runner.invoke(app, ["retrieve-train", "chain", "--workdir", str(workdir), "-r", "nope"])
    assert result.exit_code == 2 and "Known retrievers" in result.stderr
    result = runner.invoke(app, ["retrieve-train", "chain", "--workdir", str(workdir), "--set", "hidden"])
    assert result.exit_code != 0 and "KEY=VALUE" in result.output


def test_cli_resume_shows_and_uses_the_interrupted_runs_config(chain, workdir):
    train(workdir, flags={**FAST, "max_len": 10}, stop_after_steps=15)  # past the validation at step 10
    runner = CliRunner()
    result = runner.invoke(build_app(), ["retrieve-train", "chain", "-w", str(workdir), "--resume", "--show-config"])
    assert result.exit_code == 0, result.output
    assert re.search(r"max_len\s*│\s*10\s*│\s*flag", result.stdout), result.stdout
    result = runner.invoke(build_app(), ["retrieve-train", "chain", "-w", str(workdir), "--resume", "--max-len", "12"])
    assert result.exit_code == 1 and "continues a run with max_len=10" in result.stderr
    result = runner.invoke(build_app(), ["retrieve-train", "chain", "-w", str(workdir), "--resume"])
    assert result.exit_code == 0 and "Resuming at step 10, the last validation" in result.output, result.output


def test_device_errors_are_clear(monkeypatch):
    from llamarec_cli.training import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="Unknown device 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_a_batch_above_the_training_windows_is_said(chain, workdir):
    """--set batch_size=10^20 trained one step an epoch without a word."""
    flags = ["--set", "hidden=16", "--set", "max_epochs=1", "--set", "batch_size=100000000000000000000"]
    result = CliRunner().invoke(build_app(), ["retrieve-train", "chain", "-w", str(workdir), "--device", "cpu", *flags])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "batch_size 100,000,000,000,000,000,000 is more than the" in said and "one step over all" in said


def test_a_retriever_scoring_nan_exports_nothing(chain, workdir, monkeypatch):
    """NaN scores were dropped as padding: empty candidate lists, metrics of 0 and exit 0."""
    train(workdir)
    queries = LRURec.queries
    monkeypatch.setattr(LRURec, "queries", lambda self, histories: queries(self, histories) * float("nan"))
    with pytest.raises(ArtifactError, match="Retriever 'lrurec' scores items NaN or \\+inf for 150 of 150 val users"):
        export_candidates("chain", workdir=workdir, k=5, device="cpu")
    assert not any(path.exists() for path in candidates_paths(workdir, "chain", "lrurec"))
