"""The command line: discovery, help, version, and how expected errors are shown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamarec_cli import __version__
from llamarec_cli.cli import build_app

runner = CliRunner()


def invoke(*args, **kwargs):
    return runner.invoke(build_app(), list(args), **kwargs)


def test_help_lists_each_built_command_with_its_purpose():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "preprocess" in result.output and "Build a dataset artifact" in result.output
    assert "plugins" in result.output and "List the loaded plugins" in result.output
    assert "retrieve-train" in result.output and "Train a stage-1 retriever" in result.output
    assert "candidates" in result.output and "top-k candidates" in result.output
    assert "rank-train" in result.output and "Fine-tune the LLM ranker" in result.output
    assert "evaluate" in result.output and "pipeline" in result.output and "templates" in result.output
    assert "serve-shell" in result.output and "Load the retriever and ranker once" in result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"llamarec {__version__}"


@pytest.mark.parametrize(
    "command",
    [
        "preprocess",
        "retrieve-train",
        "candidates",
        "rank-train",
        "tune-fusion",
        "evaluate",
        "pipeline",
        "serve-shell",
        "plugins",
    ],
)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_has_help_with_an_example(command, flag):
    result = invoke(command, flag)
    assert result.exit_code == 0
    assert "Example" in result.output and f"llamarec {command}" in result.output


def run_cli(*args, env_extra=None, tmp_path=None):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "llamarec_cli", *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )


def test_expected_error_is_one_red_line_and_nonzero_exit(tmp_path):
    result = run_cli("preprocess", "no-such-dataset", tmp_path=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["Error: Unknown dataset 'no-such-dataset'. Known datasets: beauty, games, ml-100k."]
    assert "Traceback" not in result.stderr


def test_debug_variable_shows_the_traceback(tmp_path):
    result = run_cli("preprocess", "no-such-dataset", env_extra={"LLAMAREC_DEBUG": "1"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "UnknownNameError" in result.stderr


def test_the_cli_starts_without_the_heavy_libraries():
    """`llamarec --help` and every command's start-up stay fast: torch, polars and numpy load inside the commands."""
    code = (
        "import sys; from llamarec_cli.cli import build_app; build_app(); "
        "print(sorted(m for m in ('torch', 'polars', 'numpy', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "args",
    [
        ["tune-fusion", "chain", "--ranker", "../../outside"],
        ["tune-fusion", "chain", "--ranker", "/tmp/llamarec-absolute-ranker"],
        ["evaluate", "chain", "--ranker", "a/b"],
        ["rank-train", "chain", "--name", "..", "--device", "cpu"],
        ["tune-fusion", "../elsewhere/chain"],
    ],
)
def test_a_name_that_is_a_path_is_refused_before_anything_is_written(args, chain, workdir, tmp_path):
    before = sorted(tmp_path.rglob("*"))
    result = invoke(*args, "-w", str(workdir))
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "name is letters, digits" in result.output, result.output
    new = set(tmp_path.rglob("*")) - set(before)  # nothing written but evaluate's (empty) reports folder
    assert all(path == workdir / "chain" / "reports" and path.is_dir() for path in new), new
    assert (
        not Path("/tmp/llamarec-absolute-ranker").exists() and not Path("/tmp/llamarec-absolute-ranker.lock").exists()
    )


def test_an_unknown_dataset_lists_the_known_ones_instead_of_a_preprocess_that_would_fail(tmp_path):
    for command in ("evaluate", "tune-fusion", "candidates"):
        result = invoke(command, "nosuch", "-w", str(tmp_path))
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "Unknown dataset 'nosuch'. Known datasets: beauty, games, ml-100k" in result.output, result.output
    missing = invoke("evaluate", "ml-100k", "-w", str(tmp_path))  # known but not built: what to run
    assert missing.exit_code != 0 and "Run first: llamarec preprocess ml-100k" in missing.output


@pytest.mark.parametrize("command", ["retrieve-train", "rank-train"])
@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "8", "--set", "batch_size=32"], "--batch-size 8 and --set batch_size=32 disagree"),
        (["--set", "lr=0.1", "--set", "lr=0.2"], "--set lr is given twice, as 0.1 and as 0.2"),
        (["--resume", "--restart"], "--resume continues the interrupted run and --restart discards it"),
    ],
)
def test_options_that_contradict_each_other_are_refused_not_resolved_by_a_guess(command, args, message, tmp_path):
    result = invoke(command, "ml-100k", "--workdir", str(tmp_path), *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not any(tmp_path.iterdir())  # refused before anything is read or written


def test_the_same_value_given_as_a_flag_and_with_set_is_fine():
    from llamarec_cli.config import with_sets

    assert with_sets({"batch_size": 8, "lr": 0.1}, {"batch_size": 8}) == {"batch_size": 8, "lr": 0.1}


def test_a_cache_folder_that_is_a_file_is_one_line_naming_its_setting(tmp_path, monkeypatch):
    import zipfile

    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(raw / "ml-latest-small.zip", "w") as zf:  # unpacked into the cache, which is a file
        zf.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,1\n")
        zf.writestr("ml-latest-small/movies.csv", "movieId,title,genres\n1,A (2000),Drama\n")
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("LLAMAREC_CACHE_DIR", str(tmp_path / "cache"))
    result = invoke("preprocess", "ml-100k", "--raw-dir", str(raw), "--workdir", str(tmp_path / "runs"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "is a file, not a folder. Choose another cache folder (LLAMAREC_CACHE_DIR)" in " ".join(
        result.output.split()
    )
    missing = invoke("preprocess", "ml-100k", "--workdir", str(tmp_path / "runs"))  # the advice named <file>/raw/
    said = " ".join(missing.output.split())
    assert missing.exit_code == 1 and f"The cache folder {tmp_path / 'cache'} (LLAMAREC_CACHE_DIR) is a file" in said


def test_retrieve_train_without_a_dataset_refuses_before_printing_the_config(tmp_path):
    result = invoke("retrieve-train", "ml-100k", "--workdir", str(tmp_path))
    assert result.exit_code == 1 and "No dataset 'ml-100k'" in result.output
    assert "config (LRURecConfig)" not in result.output  # the table of a run that will not happen
    shown = invoke("retrieve-train", "ml-100k", "--workdir", str(tmp_path), "--show-config")
    assert shown.exit_code == 0 and "config (LRURecConfig)" in shown.output  # needs no dataset


def test_ctrl_c_in_a_command_without_its_own_advice_is_one_line_and_status_130(monkeypatch):
    """Click's default was "Aborted!" and status 1."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("llamarec_cli.stages.tune_fusion.tune_fusion", interrupted)
    result = invoke("tune-fusion", "chain")
    assert result.exit_code == 130
    assert result.output.strip() == "Interrupted. Run the same command again to start it over."


def test_kill_stops_a_command_as_ctrl_c_does(tmp_path):
    """SIGTERM (`kill`, a job scheduler) used to end the process without a word and without the cleanup."""
    import signal

    code = (
        "import sys, time\n"
        "import llamarec_cli.stages.tune_fusion as stage\n"
        "def slow(*a, **k):\n"
        "    print('started', flush=True)\n"
        "    time.sleep(60)\n"
        "stage.tune_fusion = slow\n"
        "sys.argv = ['llamarec', 'tune-fusion', 'chain']\n"
        "from llamarec_cli.cli import main\n"
        "main()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    assert process.stdout.readline().strip() == "started"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip() == "Interrupted. Run the same command again to start it over."


def test_the_plugins_list_names_everything_in_full_in_80_columns():
    """A table cut names at 80 columns (a pipe's width): "retrieve-t…", "llamarec-b…"."""
    result = invoke("plugins")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert "…" not in result.output and max(map(len, lines)) <= 80
    assert lines[0] == "llamarec (built in)"
    names = " ".join(result.output.split())
    assert "retrieve-train, candidates, rank-train, tune-fusion, evaluate, serve-shell" in names


@pytest.mark.parametrize(
    "value, on", [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("false", False),
                  ("no", False), ("off", False), ("", False)]
)  # fmt: skip
def test_on_off_variables_read_false_as_off(monkeypatch, value, on):
    """LLAMAREC_OFFLINE=false used to turn offline mode on (anything but "" and "0" did)."""
    from llamarec_cli import settings

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("LLAMAREC_OFFLINE", value)
    monkeypatch.setenv("LLAMAREC_DEBUG", value)
    assert settings.offline() is on and settings.debug() is on


@pytest.mark.parametrize("command", ["retrieve-train", "rank-train"])
def test_show_config_with_json_is_json(command):
    """It printed the table on stdout."""
    result = invoke(command, "ml-100k", "--show-config", "--json", "--set", "seed=7")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["seed"] == {"value": 7, "from": "flag"} and shown["batch_size"]["from"] in ("dataset", "retriever")


@pytest.mark.parametrize(
    "args", [["rank-train", "chain", "--name", "none"], ["tune-fusion", "chain", "--ranker", "none"]]
)
def test_none_is_no_rankers_name(args, chain, workdir):
    """rank-train --name none trained a ranker that evaluate and serve could never use (they read none as no ranker),
    and tune-fusion --ranker none advised exactly that."""
    result = (
        invoke(*args, "-w", str(workdir), "--device", "cpu")
        if args[0] == "rank-train"
        else invoke(*args, "-w", str(workdir))
    )
    assert result.exit_code == 2 and "'none' is no ranker's name" in " ".join(result.output.split()), result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["rank-train", "ml-100k", "--device", "gpu"], "Unknown device 'gpu'"),
        (["rank-train", "ml-100k", "--name", "../x"], "A ranker name is letters"),
        (["rank-train", "ml-100k", "--name", "none"], "'none' is no ranker's name"),
        (["rank-train", "ml-100k", "--set", "retriever=foo"], "Unknown retriever 'foo'"),
        (["retrieve-train", "ml-100k", "--device", "gpu"], "Unknown device 'gpu'"),
    ],
)
def test_show_config_refuses_what_the_run_would_refuse(args, message):
    """It showed the config with status 0; the run then failed."""
    result = invoke(*args, "--show-config")
    assert result.exit_code == 2 and message in result.output, result.output


def test_under_a_multi_process_launch_sigterm_is_left_to_the_launcher(monkeypatch):
    """torchrun / accelerate launch stop the other processes with SIGTERM when one fails: each printing resume
    advice would bury the real error."""
    from llamarec_cli.cli import _launched

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _launched()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not _launched()


def test_a_mistyped_command_line_is_one_red_line_and_where_to_look(tmp_path):
    """Typer showed a usage line and a boxed message, also under --json."""
    result = run_cli("evaluate", "ml-100k", "--bogus", "--json", tmp_path=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "Error: No such option: --bogus",
        "Try 'llamarec evaluate -h' for help.",
    ]
    bare = run_cli(tmp_path=tmp_path)  # no command: the help, as before
    assert bare.returncode == 2 and "Commands" in bare.stdout + bare.stderr and "Error" not in bare.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["preprocess", "ml-100k", "-w", ""],
        ["preprocess", "ml-100k", "--raw-dir", " "],
        ["preprocess", "ml-100k", "--from-split", ""],
        ["pipeline", "--raw-dir", ""],
        ["templates", "list", "--templates-dir", ""],
    ],
)
def test_an_empty_path_is_refused_not_read_as_the_current_folder(args, tmp_path):
    """-w "$UNSET" wrote every artifact into the current folder: Path("") is "."."""
    result = run_cli(*args, tmp_path=tmp_path)
    assert result.returncode == 2 and "is empty: name a path" in result.stderr, result.stderr


def test_templates_dir_must_be_a_folder(tmp_path):
    file = tmp_path / "file.toml"
    file.write_text("")
    result = run_cli("templates", "list", "--templates-dir", str(file), tmp_path=tmp_path)
    assert result.returncode == 2 and f"{file} is not a folder" in result.stderr, result.stderr


def test_evaluate_without_a_ranker_refuses_the_rankers_options(chain_with_candidates, workdir):
    """--ranker none ignored --template, --quantization, --dtype without a word."""
    result = invoke(
        "evaluate", "chain", "-w", str(workdir), "--ranker", "none", "--template", "plain", "--dtype", "bf16"
    )
    assert result.exit_code == 2, result.output
    assert "--template, --dtype are for the ranker" in " ".join(result.output.split())
    templates = str(Path(__file__).parents[1] / "templates")  # exported for every command: not refused
    result = invoke(
        "evaluate", "chain", "-w", str(workdir), "--ranker", "none", env={"LLAMAREC_TEMPLATES_DIR": templates}
    )
    assert result.exit_code == 0, result.output
