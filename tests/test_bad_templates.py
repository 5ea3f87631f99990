"""Bad input around prompt templates gets one actionable line: placeholders that would fail (or explode) only when a
prompt is rendered, more candidates than index letters; and the ML libraries' noise is kept off the terminal."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamarec_cli.errors import ConfigError, DataFormatError
from llamarec_cli.ranking.templates import LETTERS, load_template

VALID = Path(__file__).parents[1].joinpath("templates", "plain.toml").read_text(encoding="utf-8")


def write(folder: Path, text: str) -> Path:
    path = folder / "bad.toml"
    path.write_text(text, encoding="utf-8")
    return path


# (template field, the bad placeholder in place of the field's {placeholder}, what the message says about it)
BAD_PLACEHOLDERS = [
    ("input", "{history:zzz}", "format spec (:zzz)"),
    ("input", "{history:>100000000}", "format spec (:>100000000)"),  # would build a 100 MB string per prompt
    ("input", "{history:{candidates}}", "format spec (:{candidates})"),  # a nested field inside the spec
    ("input", "{history:>{candidates}}", "format spec"),
    ("input", "{history!r}", "conversion (!r)"),
    ("input", "{history!s:>5}", "conversion (!s)"),
    ("input", "{history.__class__}", "attribute or index access"),
    ("input", "{history[0]}", "attribute or index access"),
    ("input", "{history.__class__.__init__.__globals__}", "attribute or index access"),
    ("candidate_item", "{letter:^40}", "format spec (:^40)"),
    ("candidate_item", "{letter!a}", "conversion (!a)"),
    ("history_item", "{title[0]}", "attribute or index access"),
    ("history_item", "{title:.3}", "format spec (:.3)"),
    ("layout", "{input:x}", "format spec (:x)"),
    ("layout", "{input.upper}", "attribute or index access"),
]
ORIGINAL = {
    "input": "{history}",
    "candidate_item": "{letter}",
    "history_item": "{title}",
    "layout": "{input}",
}


@pytest.mark.parametrize(("field", "placeholder", "problem"), BAD_PLACEHOLDERS, ids=[p for _, p, _ in BAD_PLACEHOLDERS])
def test_placeholder_that_would_fail_at_render_is_refused_when_loaded(tmp_path, field, placeholder, problem):
    line = next(line for line in VALID.splitlines() if line.startswith(f"{field} = "))
    assert ORIGINAL[field] in line
    path = write(tmp_path, VALID.replace(line, line.replace(ORIGINAL[field], placeholder, 1)))
    with pytest.raises(DataFormatError) as info:
        load_template(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")  # names the file
    assert f"field '{field}'" in message and placeholder in message  # the field and the placeholder as written
    assert problem in message
    assert f"write a bare {ORIGINAL[field]}" in message  # and the fix
    assert "\n" not in message


@pytest.mark.parametrize(
    ("placeholder", "problem"),
    [("{}", "has no name"), ("{0}", "not a plain name"), ("{ history}", "not a plain name")],
)
def test_placeholder_without_a_plain_name_is_refused(tmp_path, placeholder, problem):
    path = write(tmp_path, VALID.replace("History:\\n{history}", f"History:\\n{placeholder} {{history}}"))
    with pytest.raises(DataFormatError, match="field 'input'") as info:
        load_template(path)
    assert problem in str(info.value) and placeholder in str(info.value) and str(path) in str(info.value)


def test_broken_template_is_one_line_from_the_cli(tmp_path):
    from llamarec_cli.cli import build_app

    path = write(tmp_path, VALID.replace("History:\\n{history}", "History:\\n{history:>100000000}"))
    result = CliRunner().invoke(build_app(), ["templates", "show", str(path)])
    assert result.exit_code != 0 and not isinstance(result.exception, DataFormatError)
    assert "field 'input'" in result.output and "{history:>100000000}" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_a_template_that_is_not_utf8_is_named_with_its_line(tmp_path, encoding):
    (tmp_path / "mine.toml").write_bytes(VALID.replace("Candidate", "Candidaté").encode(encoding))
    line = 1 if encoding == "utf-16" else VALID.split("Candidate")[0].count("\n") + 1
    with pytest.raises(DataFormatError, match=rf"mine\.toml, line {line}: the template is not UTF-8 text"):
        load_template("mine", tmp_path)
    from llamarec_cli.cli import build_app

    (tmp_path / "good.toml").write_text(VALID, encoding="utf-8")
    result = CliRunner().invoke(build_app(), ["templates", "list", "--templates-dir", str(tmp_path)])
    listed = " ".join(result.output.split())
    assert result.exit_code == 0 and "Traceback" not in result.output  # one broken file hides no other
    assert "mine (directory" in listed and "broken, not usable:" in listed and "not UTF-8 text" in listed
    assert "good (directory" in listed and "alpaca-short (packaged; the default)" in listed


def test_valid_templates_still_load_and_render():
    for name in ("alpaca-short", "plain"):
        text = load_template(name).render(["a {b} c"], ["x", "{y}"])  # braces in titles are text, not fields
        assert "a {b} c" in text and "{y}" in text


def test_more_candidates_than_letters_is_a_config_error():
    with pytest.raises(ConfigError, match=f"at most {len(LETTERS)} candidates") as info:
        load_template().render(["h"], [f"c{i}" for i in range(25)])
    assert "got 25" in str(info.value) and "--k 20" in str(info.value)


def test_templates_show_with_25_candidates_is_refused_in_one_line(chain, workdir):
    """A user's test request with 25 retrieved candidates (candidates --k 25) cannot be lettered A-T."""
    from llamarec_cli.cli import build_app
    from llamarec_cli.stages.candidates import export_candidates
    from llamarec_cli.stages.retrieve_train import train_retriever

    flags = {"hidden": 16, "val_every": 10, "patience": 1, "max_epochs": 1}
    train_retriever("chain", workdir=workdir, device="cpu", flags=flags)
    export_candidates("chain", workdir=workdir, k=25, device="cpu")
    result = CliRunner().invoke(build_app(), ["templates", "show", "--dataset", "chain", "--workdir", str(workdir)])
    assert result.exit_code == ConfigError.exit_code, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert "25 per user" in lines[0] and "at most 20" in lines[0]
    assert "llamarec candidates chain --retriever lrurec --k 20" in lines[0]


# --- library noise --------------------------------------------------------------------------------------------------


@pytest.fixture
def restored_library_state(monkeypatch):
    """quiet_libraries() changes process-wide state: environment, logger levels, warning filters and transformers'
    own settings. Each is put back after the test."""
    from transformers.utils import logging as transformers_logging

    from llamarec_cli import quiet

    for name in quiet.ENV_DEFAULTS:  # setenv then delenv: restored (to absent or the old value) at teardown
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    levels = {name: logging.getLogger(name).level for name in quiet.LIBRARIES}
    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    transformers_logging.set_verbosity(verbosity)
    if bars:
        transformers_logging.enable_progress_bar()


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def library_noise() -> tuple[list[str], list[str]]:
    """(log messages, warnings) that reach the user from a transformers and a bitsandbytes logger warning and a
    FutureWarning raised inside transformers."""
    from transformers.utils import logging as transformers_logging

    handler = Records()
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    bnb_root = logging.getLogger("bitsandbytes")
    bnb_root.addHandler(handler)
    try:
        transformers_logging.get_logger("transformers.modeling_utils").warning("transformers noise")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward")
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn_explicit(
                "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
                FutureWarning,
                "modeling_utils.py",
                1,
                module="transformers.modeling_utils",
                registry={},
            )
    finally:
        root.removeHandler(handler)
        bnb_root.removeHandler(handler)
    return handler.messages, [str(w.message) for w in caught]


def test_library_noise_reaches_the_user_without_quiet(restored_library_state):
    messages, caught = library_noise()
    assert messages == ["transformers noise", "Failed to load CPU gemm_4bit_forward"]
    assert len(caught) == 1


def test_quiet_libraries_silences_their_logs_bars_and_warnings(restored_library_state):
    from transformers.utils import logging as transformers_logging

    from llamarec_cli.quiet import quiet_libraries

    assert quiet_libraries() is True
    assert library_noise() == ([], [])
    assert not transformers_logging.is_progress_bar_enabled()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    # llamarec's own warnings and errors, and the libraries' errors, still show
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("mine", UserWarning, "x.py", 1, module="llamarec_cli.stages.rank_train", registry={})
    assert [str(w.message) for w in caught] == ["mine"]
    assert logging.getLogger("transformers.modeling_utils").isEnabledFor(logging.ERROR)


def test_quiet_libraries_changes_nothing_under_debug(restored_library_state, monkeypatch):
    from transformers.utils import logging as transformers_logging

    from llamarec_cli import quiet

    monkeypatch.setenv("LLAMAREC_DEBUG", "1")
    bars = transformers_logging.is_progress_bar_enabled()
    assert quiet.quiet_libraries() is False
    messages, caught = library_noise()
    assert messages == ["transformers noise", "Failed to load CPU gemm_4bit_forward"]
    assert len(caught) == 1
    assert transformers_logging.is_progress_bar_enabled() == bars
    assert not set(quiet.ENV_DEFAULTS) & set(os.environ)


def test_quiet_libraries_keeps_what_the_user_set(restored_library_state, monkeypatch):
    from transformers.utils import logging as transformers_logging

    from llamarec_cli.quiet import quiet_libraries

    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    transformers_logging.set_verbosity_info()
    quiet_libraries()
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"
    assert transformers_logging.get_verbosity() == logging.INFO


def test_quiet_libraries_imports_no_heavy_library():
    code = (
        "import sys; from llamarec_cli.quiet import quiet_libraries; quiet_libraries(); "
        "heavy = {'torch', 'transformers', 'huggingface_hub', 'peft', 'bitsandbytes', 'tqdm'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    env = {k: v for k, v in os.environ.items() if k != "LLAMAREC_DEBUG"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_huggingface_hub_imported_after_quiet_keeps_its_warnings_off():
    """On import huggingface_hub sets its logger's level from HF_HUB_VERBOSITY, over the level quiet set: its
    "Retrying in 8s" lines reached the terminal while an unreachable hub was retried."""
    code = (
        "import logging; from llamarec_cli.quiet import quiet_libraries; quiet_libraries(); "
        "from huggingface_hub.utils import logging as hub_logging; "
        "hub_logging.get_logger('huggingface_hub.utils._http').warning('Retrying in 8s [Retry 1/5].')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LLAMAREC_DEBUG", "HF_HUB_VERBOSITY")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "Retrying" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "line, message",
    [
        ("title_tokens = 0", "field 'title_tokens' must be a whole number >= 1"),  # every title would be blank
        ("history_length = true", "field 'history_length' must be a whole number >= 0"),  # TOML true is no count
        ("max_tokens = false", "field 'max_tokens' must be a whole number >= 1"),
    ],
)
def test_a_count_that_would_blank_titles_or_is_a_boolean_is_refused(tmp_path, line, message):
    field = line.split()[0]
    text = "\n".join(line if row.startswith(field + " ") else row for row in VALID.splitlines())
    with pytest.raises(DataFormatError, match=message):
        load_template(write(tmp_path, text))


def test_a_placeholder_where_none_is_filled_in_is_refused_with_true_advice(tmp_path):
    """The advice was "use {{ }} for braces", which these fields show doubled: they are used as written."""
    text = "\n".join(
        'instruction = "Answer with {letter} only"' if row.startswith("instruction ") else row
        for row in VALID.splitlines()
    )
    with pytest.raises(DataFormatError, match="field 'instruction' is used as written: it cannot contain"):
        load_template(write(tmp_path, text))


def test_a_bom_is_read_and_a_directory_is_named_as_one(tmp_path):
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + VALID.encode("utf-8"))
    assert load_template(tmp_path / "bom.toml").title_tokens > 0  # Notepad saves UTF-8 with a BOM
    (tmp_path / "folder.toml").mkdir()
    with pytest.raises(DataFormatError, match="folder.toml: is a directory, not a template file"):
        load_template(tmp_path / "folder.toml")


def test_a_bare_name_is_a_template_name_whatever_file_the_current_folder_holds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain").write_text("junk that is no TOML", encoding="utf-8")
    assert load_template("plain").name == "plain"  # the packaged one
    (tmp_path / "mine").write_text(VALID, encoding="utf-8")
    assert load_template("mine").path == Path("mine")  # a bare file name that names no template: the file
