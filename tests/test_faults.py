"""Faults and bad input, as classes: every artifact x every way a file goes bad, every numeric setting x every bad
number. A new artifact or setting is covered by adding one row; each case must end in one LlamarecError (an
actionable line), never a traceback and never a silent success with other results."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil

import pytest
import torch
from conftest import fast_config
from typer.testing import CliRunner

from llamarec_cli.cli import build_app, storage_error
from llamarec_cli.errors import ArtifactError, ConfigError, LlamarecError, TrainingDivergedError, WorkdirError
from llamarec_cli.evaluation.metrics import ranks
from llamarec_cli.ranking.config import RankerConfig
from llamarec_cli.retrieval.contract import parse_sets
from llamarec_cli.retrieval.lru import LRURecConfig

FAST_RETRIEVER = {"hidden": 16, "val_every": 10, "patience": 2, "max_epochs": 6}


# --- metrics: a diverged model is never scored as perfect -----------------------------------------------------------


@pytest.mark.parametrize(
    "scores, target, expected",
    [
        ([0.1, 0.5, 0.2], 1, 1.0),  # a finite case, for contrast
        ([math.nan] * 3, 1, 3.0),  # everything NaN: last, not rank 0 (a "hit" with NDCG inf)
        ([0.1, math.nan, 0.2], 1, 3.0),  # the target NaN
        ([0.1, math.inf, 0.2], 1, 3.0),  # the target +inf
        ([math.nan, 0.5, 0.2], 1, 2.0),  # another item NaN counts against the target
        ([0.5, 0.5, 0.2], 1, 2.0),  # ties count against the target
    ],
)
def test_non_finite_scores_rank_the_true_item_last(scores, target, expected):
    assert ranks(torch.tensor([scores]), torch.tensor([target])).item() == expected


# --- numeric settings x bad numbers ----------------------------------------------------------------------------------


def float_fields(config_class):
    return [f.name for f in dataclasses.fields(config_class) if f.type in ("float", float)]


BAD_FLOATS = ["nan", "inf", "-inf", "NaN"]


@pytest.mark.parametrize("value", [",", " , ,"])
def test_a_lora_target_that_names_no_module_is_refused(value):
    """It was stored as given and read as the default targets."""
    with pytest.raises(ConfigError, match="names no module"):
        RankerConfig(lora_target=value)


@pytest.mark.parametrize("config_class", [LRURecConfig, RankerConfig])
@pytest.mark.parametrize("text", BAD_FLOATS)
def test_a_non_finite_setting_is_refused_up_front(config_class, text):
    fields = float_fields(config_class)
    assert fields  # lr at least: the test would pass vacuously otherwise
    for name in fields:
        values = parse_sets(config_class, [f"{name}={text}"])
        with pytest.raises(ConfigError, match=f"{name} must be a finite number"):
            config_class(**values)


def int_fields(config_class):
    return [f.name for f in dataclasses.fields(config_class) if f.type in ("int", "int | None")]


@pytest.mark.parametrize("config_class", [LRURecConfig, RankerConfig])
@pytest.mark.parametrize("value", [0, -5])
def test_counts_below_one_are_refused(config_class, value):
    for name in int_fields(config_class):
        if name in ("seed", "warmup_steps", "uniform_negatives"):  # 0: valid seed, no warm-up, in-batch negatives only
            continue
        with pytest.raises(ConfigError, match=name):
            config_class(**{name: value})


@pytest.mark.parametrize("config_class", [LRURecConfig, RankerConfig])
@pytest.mark.parametrize("seed", [-1, 2**64])
def test_seeds_out_of_range_are_refused(config_class, seed):
    with pytest.raises(ConfigError, match="seed"):
        config_class(seed=seed)


@pytest.mark.parametrize(
    "args",
    [
        ["pipeline", "chain", "--batch-size", "0"],
        ["pipeline", "chain", "--train-examples", "0"],
        ["pipeline", "chain", "--lr", "nan"],
        ["pipeline", "chain", "--test-examples", "-1"],
        ["pipeline", "chain", "--retriever-epochs", "0"],
        ["pipeline", "chain", "--model", "/nonexistent/model"],
        ["retrieve-train", "chain", "--lr", "inf"],
        ["retrieve-train", "chain", "--set", "lr=nan"],
        ["rank-train", "chain", "--lr", "nan"],
        ["rank-train", "chain", "--batch-size", "0"],
        ["evaluate", "chain", "--batch-size", "0"],
        ["evaluate", "chain", "--max-examples", "-3"],
        ["candidates", "chain", "--k", "0"],
        ["retrieve-train", "chain", "--seed", str(2**64)],
        ["retrieve-train", "chain", "--set", "blocks=1000000000000"],
    ],
)
def test_bad_options_are_one_line_before_any_work(args, workdir):
    result = CliRunner().invoke(build_app(), [*args, "-w", str(workdir)])
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output and result.output.strip().startswith("Error:"), result.output
    assert len(result.output.strip().splitlines()) <= 2  # one line (wrapped at most once by a narrow terminal)
    assert not (workdir / "chain").exists()  # refused before the first stage wrote anything


@pytest.mark.parametrize("setting", ["hidden=1000000000000"])
def test_a_huge_size_is_one_line(chain, workdir, setting):
    result = CliRunner().invoke(build_app(), ["retrieve-train", "chain", "--set", setting, "-w", str(workdir)])
    assert result.exit_code == 2 and "Error: Cannot build lrurec" in result.output, result.output


def test_more_uniform_negatives_than_items_is_one_line(chain, workdir):
    """--uniform-negatives 999999999999 started training, then failed in the loss with a traceback."""
    args = ["retrieve-train", "chain", "--loss", "sampled", "--uniform-negatives", "999999999999", "-w", str(workdir)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 2, result.output
    assert "--uniform-negatives 999,999,999,999 is more than the 1,048,576 a step can draw" in " ".join(
        result.output.split()
    )


# --- runs that diverge -----------------------------------------------------------------------------------------------


def test_a_retriever_whose_loss_is_not_finite_before_any_update_is_not_told_to_lower_the_lr(
    chain, workdir, monkeypatch
):
    """lr 1e-5 cannot fix a model that gives NaN at its first step: the advice blamed the learning rate."""
    from llamarec_cli.retrieval.lru import LRURec
    from llamarec_cli.stages.retrieve_train import train_retriever

    train_queries = LRURec.train_queries
    monkeypatch.setattr(
        LRURec,
        "train_queries",
        lambda self, windows: tuple(
            (t * float("nan") if t.is_floating_point() else t) for t in train_queries(self, windows)
        ),
    )
    with pytest.raises(TrainingDivergedError, match="at step 1.*before any update.*'lrurec' itself") as raised:
        train_retriever("chain", workdir=workdir, device="cpu", flags=FAST_RETRIEVER)
    assert "--lr" not in str(raised.value)


def test_a_diverging_retriever_stops_and_keeps_the_old_checkpoint(chain, workdir):
    from llamarec_cli.retrieval.checkpoint import partial_dir, retriever_dir
    from llamarec_cli.stages.retrieve_train import train_retriever

    train_retriever("chain", workdir=workdir, device="cpu", flags=FAST_RETRIEVER)
    weights = retriever_dir(workdir, "chain", "lrurec") / "model.safetensors"
    before = weights.read_bytes()
    with pytest.raises(TrainingDivergedError, match=r"loss became (nan|inf).*--lr"):
        train_retriever("chain", workdir=workdir, device="cpu", flags=FAST_RETRIEVER | {"lr": 1e30}, restart=True)
    assert weights.read_bytes() == before
    assert not partial_dir(workdir, "chain", "lrurec").exists()  # the next plain run is not blocked
    train_retriever("chain", workdir=workdir, device="cpu", flags=FAST_RETRIEVER)


# --- artifacts x faults ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir):
    """A work directory with 'chain' preprocessed, LRURec, its candidates and a tiny ranker: copied per case."""
    from conftest import ChainPlugin

    from llamarec_cli import plugins
    from llamarec_cli.stages.candidates import export_candidates
    from llamarec_cli.stages.preprocess import preprocess
    from llamarec_cli.stages.rank_train import train_ranker
    from llamarec_cli.stages.retrieve_train import train_retriever

    workdir = tmp_path_factory.mktemp("trained")
    plugins.register_plugin(ChainPlugin(), name="chain-plugin")
    try:
        preprocess("chain", workdir=workdir)
        train_retriever("chain", workdir=workdir, device="cpu", flags=FAST_RETRIEVER)
        export_candidates("chain", workdir=workdir, k=10, device="cpu")
        train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir, max_train_examples=8), device="cpu")
    finally:
        plugins.unregister_plugin("chain-plugin")  # each test registers it again (chain_registered)
    return workdir


def load_each(workdir):
    """What each artifact's loader gives, reduced to what a user would see change."""
    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.retrieval.data import eval_set
    from llamarec_cli.retrieval.evaluate import evaluate
    from llamarec_cli.stages.candidates import load_candidates
    from llamarec_cli.stages.evaluate import load_ranker
    from llamarec_cli.stages.retrieve_train import load_retriever

    dataset = load_dataset(workdir, "chain")
    model, manifest = load_retriever(workdir, dataset, "lrurec")
    frame, _ = load_candidates(workdir, dataset)
    ranker = load_ranker(dataset, workdir, device="cpu")
    weights = [p.detach().clone() for p in ranker.model.parameters()][:4]
    return {
        "retriever": evaluate(model, eval_set(dataset, "test"), "cpu"),
        "candidates": frame.to_dicts(),
        "ranker": weights,
    }


ARTIFACT_FILES = [
    "retriever/lrurec/model.safetensors",
    "retriever/lrurec/config.json",
    "retriever/lrurec/manifest.json",
    "candidates/lrurec.parquet",
    "candidates/lrurec.json",
    "ranker/default/adapter/adapter_model.safetensors",
    "ranker/default/adapter/adapter_config.json",
    "ranker/default/manifest.json",
]
MANIFESTS = ["retriever/lrurec/manifest.json", "candidates/lrurec.json", "ranker/default/manifest.json"]


def missing(path):
    path.unlink()


def truncated(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def bytes_flipped(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(max(0, middle - 1000), min(len(data), middle + 1000)):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def empty(path):
    path.write_bytes(b"")


def edit_manifest(change):
    """An edit sealed anew, as an older or another run would have written it: the checks behind the seal refuse it."""
    from llamarec_cli.artifacts import seal

    def apply(path):
        manifest = json.loads(path.read_text())
        change(manifest)
        path.write_text(json.dumps(seal(manifest)))

    return apply


wrong_format_version = edit_manifest(lambda m: m.update(format_version=999))
from_another_dataset = edit_manifest(lambda m: m["dataset"].update(checksum="0" * 64))


def copy_of(trained, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(trained, workdir)
    return workdir


@pytest.fixture
def chain_registered():
    from conftest import ChainPlugin

    from llamarec_cli import plugins

    plugins.register_plugin(ChainPlugin(), name="chain-plugin")
    yield
    plugins.unregister_plugin("chain-plugin")


@pytest.mark.parametrize("fault", [missing, truncated, bytes_flipped, empty], ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", ARTIFACT_FILES)
def test_a_damaged_artifact_file_is_refused_with_what_to_rerun(trained, tmp_path, chain_registered, name, fault):
    workdir = copy_of(trained, tmp_path)
    fault(workdir / "chain" / name)
    with pytest.raises(ArtifactError, match=r"(Rerun|Run first): llamarec (retrieve-train|candidates|rank-train)"):
        load_each(workdir)


@pytest.mark.parametrize("fault", [wrong_format_version, from_another_dataset], ids=["format_version", "dataset"])
@pytest.mark.parametrize("name", MANIFESTS)
def test_a_stale_or_foreign_manifest_is_refused(trained, tmp_path, chain_registered, name, fault):
    workdir = copy_of(trained, tmp_path)
    fault(workdir / "chain" / name)
    with pytest.raises(ArtifactError, match="(another version|incompatible llamarec version).*Rerun"):
        load_each(workdir)


@pytest.mark.parametrize("name", ARTIFACT_FILES)
def test_random_bytes_never_give_a_traceback_or_other_results(trained, tmp_path, chain_registered, name):
    reference = load_each(trained)
    rng = random.Random(name)
    for trial in range(3):
        workdir = tmp_path / f"trial{trial}"
        shutil.copytree(trained, workdir)
        path = workdir / "chain" / name
        data = bytearray(path.read_bytes())
        for _ in range(rng.choice([1, 8, 64])):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            result = load_each(workdir)
        except LlamarecError:
            continue
        assert result["retriever"] == reference["retriever"] and result["candidates"] == reference["candidates"]
        assert all(torch.equal(a, b) for a, b in zip(result["ranker"], reference["ranker"]))


def test_evaluate_refuses_an_adapter_folder_that_is_not_one(trained, tmp_path, chain_registered):
    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.stages.evaluate import load_ranker

    dataset = load_dataset(trained, "chain")
    with pytest.raises(ArtifactError, match="not a PEFT adapter folder"):
        load_ranker(dataset, trained, adapter="/nonexistent", device="cpu")


# --- runs that would block or clobber each other --------------------------------------------------------------------


def test_a_second_run_on_the_same_artifact_is_refused_with_the_first_ones_pid(tmp_path):
    import os

    from llamarec_cli.workspace import run_lock

    with run_lock(tmp_path, "lrurec", "retrieve-train of 'lrurec' on chain"):
        with pytest.raises(
            ArtifactError, match=f"Another retrieve-train of 'lrurec' on chain is running \\(pid {os.getpid()}\\)"
        ):
            with run_lock(tmp_path, "lrurec", "retrieve-train of 'lrurec' on chain"):
                pass
    with run_lock(tmp_path, "lrurec", "again"):  # released at the end of the block
        pass


def test_a_run_that_failed_before_training_does_not_block_the_next(chain, workdir):
    from llamarec_cli.retrieval.checkpoint import partial_dir
    from llamarec_cli.stages.retrieve_train import train_retriever

    partial = partial_dir(workdir, "chain", "lrurec")
    partial.mkdir(parents=True)
    (partial / "run.json").write_text("{}")  # what a run that died before its first validation leaves
    manifest = train_retriever("chain", workdir=workdir, device="cpu", flags=FAST_RETRIEVER)
    assert manifest["training"]["steps"] > 0


# --- the machine: disk full, read-only ------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["ENOSPC", "EACCES", "EROFS", "EDQUOT"])
def test_storage_errors_become_one_line_naming_the_path(code):
    import errno

    error = storage_error(OSError(getattr(errno, code), os_message(code), "/work/x/model.safetensors"))
    assert isinstance(error, WorkdirError) and "/work/x/model.safetensors" in str(error)
    assert "previous artifact is unchanged" in str(error)
    assert storage_error(OSError(errno.EBADF, "bad file descriptor")) is None  # a bug: shown, not disguised


def test_a_cache_folder_that_cannot_be_created_is_one_line(monkeypatch, tmp_path):
    """LLAMAREC_CACHE_DIR=/proc/nope: FileNotFoundError from mkdir was a traceback."""
    import errno

    monkeypatch.setenv("LLAMAREC_CACHE_DIR", "/proc/nope")
    error = storage_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/nope/raw/ml-100k"))
    assert isinstance(error, WorkdirError)
    assert str(error) == (
        "Cannot create /proc/nope/raw/ml-100k: No such file or directory. Choose another cache folder "
        "(LLAMAREC_CACHE_DIR)."
    )
    elsewhere = FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "gone"))
    assert storage_error(elsewhere) is None  # a missing file outside the cache: a bug, shown
    (tmp_path / "cache").mkdir()
    monkeypatch.setenv("LLAMAREC_CACHE_DIR", str(tmp_path / "cache"))
    gone = FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "cache" / "raw" / "x.csv"))
    assert storage_error(gone) is None  # a file gone from a cache that exists: a bug too, not bad advice


def os_message(code):
    import errno
    import os

    return os.strerror(getattr(errno, code))


def test_an_unwritable_work_directory_is_refused_before_the_work(chain, workdir):
    from llamarec_cli.stages.retrieve_train import train_retriever

    (workdir / "chain" / "retriever").write_text("a file where the folder goes")  # fails for root too, unlike chmod
    with pytest.raises(WorkdirError, match="Cannot write to .*retriever"):
        train_retriever("chain", workdir=workdir, device="cpu", flags=FAST_RETRIEVER)


# --- rank-train: resume, and checks that come before the work -------------------------------------------------------


def test_rank_train_resume_takes_the_saved_config_and_the_hint_works(chain_with_candidates, workdir, tiny_llama_dir):
    from llamarec_cli.stages.rank_train import ranker_dir, train_ranker

    config = fast_config(tiny_llama_dir)
    stopped = train_ranker("chain", workdir=workdir, config=config, name="mine", device="cpu", stop_after_steps=4)
    assert stopped["interrupted"]
    runner, app = CliRunner(), build_app()
    # the hint a user is given, with no flag repeated: the run's model, budget and lr come from its saved config
    result = runner.invoke(app, ["rank-train", "chain", "--name", "mine", "--resume", "-w", str(workdir)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((ranker_dir(workdir, "chain", "mine") / "manifest.json").read_text())
    assert manifest["config"] == config.to_dict() and manifest["steps"] == 6
    result = runner.invoke(app, ["rank-train", "chain", "--name", "mine", "--resume", "-w", str(workdir)])
    assert result.exit_code == 1 and "Nothing to resume for ranker 'mine'" in result.output


def test_rank_train_resume_refuses_a_flag_that_changes_the_run(chain_with_candidates, workdir, tiny_llama_dir):
    from llamarec_cli.stages.rank_train import train_ranker

    train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir), device="cpu", stop_after_steps=2)
    result = CliRunner().invoke(build_app(), ["rank-train", "chain", "--resume", "--lr", "0.5", "-w", str(workdir)])
    assert result.exit_code == 2 and "lr=0.001" in result.output and "--restart" in result.output


def test_rank_train_resume_refuses_candidates_exported_since(chain_with_candidates, workdir, tiny_llama_dir):
    from llamarec_cli.files import sha256_of
    from llamarec_cli.stages.candidates import candidates_paths, export_candidates
    from llamarec_cli.stages.rank_train import resumable_on, train_ranker

    config = fast_config(tiny_llama_dir)
    train_ranker("chain", workdir=workdir, config=config, device="cpu", stop_after_steps=2)
    old = sha256_of(candidates_paths(workdir, "chain", config.retriever)[0])
    export_candidates("chain", workdir=workdir, k=12, device="cpu")  # other candidates since the run began
    with pytest.raises(ArtifactError, match=r"candidates of 'lrurec' changed.*--restart"):
        train_ranker("chain", workdir=workdir, config=config, device="cpu", resume=True)
    new = sha256_of(candidates_paths(workdir, "chain", config.retriever)[0])
    assert not resumable_on(workdir, "chain", "default", new)  # so the pipeline restarts it rather than stop
    assert resumable_on(workdir, "chain", "default", old)
    train_ranker("chain", workdir=workdir, config=config, device="cpu", restart=True)  # the hint works


def test_an_empty_validation_subset_is_refused_before_the_model_loads(
    chain_with_candidates, workdir, tiny_llama_dir, monkeypatch
):
    from llamarec_cli.ranking import models
    from llamarec_cli.ranking.examples import Subset
    from llamarec_cli.stages import rank_train as train

    monkeypatch.setattr(train, "valid_subset", lambda dataset, candidates, split, k=None: Subset(split, [], 30))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded first"))
    with pytest.raises(ArtifactError, match="No validation user .* --k 20"):
        train.train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir), device="cpu")


@pytest.mark.parametrize("where", ["loss", "letter logits"])
def test_a_diverging_ranker_stops_with_one_line(chain_with_candidates, workdir, tiny_llama_dir, monkeypatch, where):
    # A huge lr does not make the tiny model's loss NaN (it saturates at ln |vocab|), so NaN is injected where it
    # would appear: the training loss, or the letter logits at validation.
    from llamarec_cli.stages import rank_train as train

    if where == "loss":
        real = train.accumulate_step
        monkeypatch.setattr(train, "accumulate_step", lambda *a, **k: real(*a, **k) * math.nan)
    else:
        real = train.score_subset
        monkeypatch.setattr(train, "score_subset", lambda *a, **k: [s * math.nan for s in real(*a, **k)])
    with pytest.raises(TrainingDivergedError, match=r"became (nan|NaN) at step \d+.*--lr"):
        train.train_ranker("chain", workdir=workdir, config=fast_config(tiny_llama_dir), device="cpu")
    assert not train.Workdir.partial(train.ranker_dir(workdir, "chain", "default")).exists()
    assert not train.ranker_dir(workdir, "chain", "default").exists()


def test_restart_cannot_delete_a_live_runs_state(chain, workdir):
    from llamarec_cli.retrieval.checkpoint import partial_dir
    from llamarec_cli.stages.retrieve_train import train_retriever
    from llamarec_cli.workspace import run_lock

    partial = partial_dir(workdir, "chain", "lrurec")
    (partial / "training").mkdir(parents=True)
    (partial / "training" / "state.safetensors").write_bytes(b"the live run's state")
    with run_lock(partial.parent, "lrurec", "retrieve-train of 'lrurec' on chain"):  # as the live run holds it
        with pytest.raises(ArtifactError, match="Another retrieve-train .* is running"):
            train_retriever("chain", workdir=workdir, device="cpu", flags=FAST_RETRIEVER, restart=True)
    assert (partial / "training" / "state.safetensors").read_bytes() == b"the live run's state"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("command", ["candidates", "serve-shell"])
def test_device_cuda_without_a_gpu_says_so_not_rerun_training(trained, tmp_path, chain_registered, command):
    workdir = copy_of(trained, tmp_path)
    extra = ["--user", "1", "--ranker", "none"] if command == "serve-shell" else []
    result = CliRunner().invoke(build_app(), [command, "chain", "--device", "cuda", *extra, "-w", str(workdir)])
    assert result.exit_code == 2 and "no CUDA GPU" in result.output and "retrieve-train" not in result.output
