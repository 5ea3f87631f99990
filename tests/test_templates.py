"""Prompt templates: the golden default, the checks on broken files, and the search order."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamarec_cli import hookimpl, plugins
from llamarec_cli.cli import build_app
from llamarec_cli.errors import ConfigError, DataFormatError, UnknownNameError
from llamarec_cli.ranking.templates import available_templates, load_template

# METHOD.md §5, assembled by hand from its string literals for two history items and three candidates.
GOLDEN = (
    "### Instruction:\n"
    "Given user history in chronological order, recommend an item from the candidate pool with its index letter."
    "\n\n### Input:\n"
    "User history: (1) Toy Story (1995) \n (2) Heat (1995); \n "
    "Candidate pool: (A) Jumanji (1995) \n (B) Casino (1995) \n (C) Sabrina (1995)"
    "\n\n### Response:\n"
)


def test_default_template_renders_the_papers_prompt():
    template = load_template()
    assert template.name == "alpaca-short"
    text = template.render(["Toy Story (1995)", "Heat (1995)"], ["Jumanji (1995)", "Casino (1995)", "Sabrina (1995)"])
    assert text == GOLDEN
    assert (template.history_length, template.title_tokens, template.max_tokens) == (20, 32, 1536)


def test_history_keeps_the_last_items_numbered_from_one():
    template = load_template()
    text = template.render([f"t{i}" for i in range(30)], ["c"])
    assert "(1) t10 \n" in text and "(20) t29;" in text and "t9 " not in text


def test_more_candidates_than_letters_is_refused():
    with pytest.raises(ValueError, match="at most 20"):
        load_template().render(["h"], ["c"] * 21)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


VALID = Path(__file__).parents[1].joinpath("templates", "plain.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('candidate_item = "{letter}. {title}"', 'candidate_item = "{title}"'), "lacks {letter}"),
        (lambda t: t.replace("history_length = 20\n", ""), "missing the field"),
        (lambda t: t.replace('input = "History', 'input = "{user} History'), "unknown placeholder"),
        (lambda t: t.replace("max_tokens = 1536", 'max_tokens = "many"'), "whole number"),
        (lambda t: t + "colour = 'blue'\n", "unknown template field"),
        (lambda t: t.replace('separator = "\\n"', 'separator = "\\n'), "not valid TOML"),
    ],
)
def test_broken_templates_are_refused_naming_the_file(tmp_path, edit, message):
    path = write(tmp_path, "broken", edit(VALID))
    with pytest.raises(DataFormatError, match=message) as info:
        load_template(path)
    assert str(path) in str(info.value)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="alpaca-short, plain"):
        load_template("nope")


def test_search_order_directory_then_plugin_then_packaged(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    write(folder, "plain", VALID.replace("Compact prompt, one line per item, no Alpaca headers", "Directory copy"))
    plugin_file = write(
        tmp_path,
        "from-plugin",
        VALID.replace("Compact prompt, one line per item, no Alpaca headers", "Plugin template"),
    )
    shadowing = write(tmp_path / "mine", "alpaca-short", VALID.replace("Compact prompt", "Shadow"))

    class TemplatePlugin:
        @hookimpl
        def register_prompt_templates(self, register):
            register("from-plugin", plugin_file)
            register("plain", plugin_file)

    plugins.register_plugin(TemplatePlugin(), "template-plugin")
    try:
        found = available_templates(folder)
        assert found["plain"][1].startswith("directory")  # the directory wins over the plugin
        assert found["from-plugin"][1] == "plugin template-plugin"
        assert found["alpaca-short"][0] == shadowing
        assert load_template("from-plugin").description == "Plugin template"
        assert load_template("plain", folder).description == "Directory copy"
        assert load_template("plain").description == "Plugin template"  # without the directory, the plugin's
        assert load_template(Path(plugin_file)).description == "Plugin template"  # explicit path first of all
    finally:
        plugins.unregister_plugin("template-plugin")


def test_a_templates_dir_that_does_not_exist_is_refused(tmp_path):
    # a mistyped directory must not fall back to the packaged templates silently
    with pytest.raises(ConfigError, match="does not exist"):
        load_template("plain", tmp_path / "mistyped")
    args = ["templates", "list", "--templates-dir", str(tmp_path / "mistyped")]
    result = CliRunner().invoke(build_app(), args, env={"COLUMNS": "200"})  # no line break inside the message
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_a_user_without_a_dataset_is_refused_not_ignored():
    result = CliRunner().invoke(build_app(), ["templates", "show", "--user", "7"])
    assert result.exit_code == 2 and "--user 7 needs --dataset" in result.output


def test_show_with_a_model_gives_the_prompt_that_model_reads(tmp_path, llama2_tokenizer_dir):
    """Without a tokenizer, `show` cannot apply title_tokens or max_tokens: it says so, and --model applies them."""
    plain = load_template("plain").path.read_text()
    (tmp_path / "short.toml").write_text(plain.replace("title_tokens = 32", "title_tokens = 2"))
    runner = CliRunner()
    bare = runner.invoke(build_app(), ["templates", "show", str(tmp_path / "short.toml")])
    assert bare.exit_code == 0 and "- History item 1" in bare.output
    assert "Titles not cut to 2 tokens" in " ".join(bare.output.split())
    args = ["templates", "show", str(tmp_path / "short.toml"), "--model", str(llama2_tokenizer_dir)]
    read = runner.invoke(build_app(), args)
    assert read.exit_code == 0, read.output
    assert "- History item 1" not in read.output and "- History item\n" in read.output  # its first 2 tokens
    assert read.output.endswith("⟨answer letter⟩\n") and "Titles not cut" not in read.output

    (tmp_path / "space.toml").write_text(plain.replace("Answer (the candidate's letter):\\n", "Answer: "))
    split = runner.invoke(
        build_app(), ["templates", "show", str(tmp_path / "space.toml"), "--model", str(llama2_tokenizer_dir)]
    )
    assert split.exit_code != 0 and "exactly one new token" in " ".join(split.output.split())


def test_a_template_file_ending_in_upper_case_toml_is_found(tmp_path):
    """Mine.TOML (as some editors save it) was skipped in --templates-dir, and loaded by path only by name."""
    (tmp_path / "Mine.TOML").write_text(VALID.replace("Compact prompt", "Upper case"), encoding="utf-8")
    assert "Mine" in available_templates(tmp_path)
    assert "Upper case" in load_template("Mine", tmp_path).description
    assert "Upper case" in load_template(tmp_path / "Mine.TOML").description
