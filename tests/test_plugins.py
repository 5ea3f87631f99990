"""The plugin boundary: in-process plugins, entry points, the LLAMAREC_PLUGINS filter, name clashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import polars as pl
import pytest
from typer.testing import CliRunner

from llamarec_cli import DatasetSpec, hookimpl, plugins
from llamarec_cli.cli import build_app
from llamarec_cli.errors import DuplicateNameError, PluginError, UnknownNameError
from llamarec_cli.stages.preprocess import preprocess

USERS = 6


def toy_interactions(files):
    rows = [(f"u{u}", f"i{i}", 1000 * u + (i * 37) % 11) for u in range(USERS) for i in range(6)]
    return pl.DataFrame(rows, schema=["user", "item", "timestamp"], orient="row")


def toy_titles(files, needed):
    return pl.DataFrame({"item": [f"i{i}" for i in range(6)], "title": [f"Toy {i}" for i in range(6)]})


class ToyPlugin:
    @hookimpl
    def register_datasets(self, register):
        register(
            DatasetSpec(
                name="toy",
                description="an in-memory toy dataset",
                read_interactions=toy_interactions,
                read_titles=toy_titles,
            )
        )


@pytest.fixture
def toy_plugin():
    plugins.register_plugin(ToyPlugin(), name="toy-plugin")
    yield
    plugins.unregister_plugin("toy-plugin")


def test_in_memory_dataset_plugin_preprocesses(toy_plugin, workdir):
    dataset = preprocess("toy", workdir=str(workdir))  # a plugin's test may pass strings
    assert dataset.manifest["statistics"] == {
        "users": USERS,
        "items": 6,
        "interactions": 36,
        "avg_length": 6.0,
        "density": 1.0,
    }
    assert plugins.datasets().owner("toy") == "toy-plugin"


def test_plugins_command_lists_what_each_plugin_registers(toy_plugin):
    result = CliRunner().invoke(build_app(), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in json.loads(result.stdout)}
    assert listed["toy-plugin"]["datasets"] == ["toy"]
    assert listed["llamarec"]["datasets"] == ["beauty", "games", "ml-100k"]
    assert listed["llamarec"]["commands"] == [
        *("pipeline", "preprocess", "retrieve-train", "candidates", "rank-train", "tune-fusion", "evaluate"),
        *("serve-shell", "serve"),
        *("plugins", "templates"),
    ]
    assert listed["llamarec"]["retrievers"] == ["lrurec"]
    assert listed["llamarec"]["builtin"] is True


def test_duplicate_dataset_name_is_refused():
    class Clash:
        @hookimpl
        def register_datasets(self, register):
            register(
                DatasetSpec(name="beauty", description="", read_interactions=toy_interactions, read_titles=toy_titles)
            )

    plugins.register_plugin(Clash(), name="clash")
    try:
        with pytest.raises(
            DuplicateNameError,
            match="Dataset 'beauty' is registered by both plugin 'llamarec' and plugin 'clash'",
        ):
            plugins.datasets()
    finally:
        plugins.unregister_plugin("clash")
    assert "beauty" in plugins.datasets()


def test_unknown_name_lists_the_known_ones(toy_plugin):
    with pytest.raises(
        UnknownNameError, match=r"Unknown dataset 'nope'\. Known datasets: beauty, games, ml-100k, toy\."
    ):
        plugins.datasets().get("nope")


@pytest.fixture
def installed_plugin(tmp_path):
    """A real distribution on sys.path with an entry point in group 'llamarec'."""
    (tmp_path / "llamarec_toy.py").write_text(
        textwrap.dedent("""
        import polars as pl
        import typer
        from llamarec_cli import DatasetSpec, hookimpl

        @hookimpl
        def register_datasets(register):
            register(DatasetSpec(
                name="ep-toy", description="from an entry point",
                read_interactions=lambda files: pl.DataFrame(
                    [(u, i, u * 10 + i) for u in range(5) for i in range(5)],
                    schema=["user", "item", "timestamp"], orient="row"),
                read_titles=lambda files, needed: pl.DataFrame({"item": list(range(5)),
                                                                "title": [f"T{i}" for i in range(5)]}),
            ))

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                "Say hello."
                typer.echo("hello from a plugin")
    """)
    )
    dist = tmp_path / "llamarec_toy-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llamarec-toy\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[llamarec]\ntoy = llamarec_toy\n")
    return tmp_path


def run_cli(args, path, **env):
    full_env = {**os.environ, "PYTHONPATH": str(path), **env}
    return subprocess.run(
        [sys.executable, "-m", "llamarec_cli", *args], capture_output=True, text=True, env=full_env, cwd=path
    )


def test_entry_point_plugin_is_loaded_listed_and_usable(installed_plugin):
    listed = run_cli(["plugins", "--json"], installed_plugin)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["toy"]["distribution"] == "llamarec-toy" and rows["toy"]["version"] == "1.2.3"
    assert rows["toy"]["datasets"] == ["ep-toy"] and rows["toy"]["commands"] == ["hello"]
    assert run_cli(["hello"], installed_plugin).stdout.strip() == "hello from a plugin"
    made = run_cli(["preprocess", "ep-toy", "--json"], installed_plugin)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["interactions"] == 25


@pytest.mark.parametrize(("allowed", "loaded"), [("", False), ("toy", True), ("llamarec-toy", True), ("other", False)])
def test_environment_variable_limits_external_plugins(installed_plugin, allowed, loaded):
    result = run_cli(["plugins", "--json"], installed_plugin, LLAMAREC_PLUGINS=allowed)
    names = {row["name"] for row in json.loads(result.stdout)}
    assert ("toy" in names) is loaded
    assert "llamarec" in names  # built-ins always load


def test_a_name_in_the_filter_that_nothing_installed_has_is_warned_about(installed_plugin):
    result = run_cli(["plugins", "--json"], installed_plugin, LLAMAREC_PLUGINS="toy,llamarec-tyo")
    assert result.returncode == 0 and "toy" in {row["name"] for row in json.loads(result.stdout)}
    assert "LLAMAREC_PLUGINS names 'llamarec-tyo', which no installed plugin has" in result.stderr
    assert "llamarec-toy" in result.stderr  # the installed ones, to pick from
    assert "warning" not in run_cli(["plugins"], installed_plugin, LLAMAREC_PLUGINS="llamarec-toy").stderr


def test_clashing_entry_point_gives_one_clear_line(installed_plugin):
    module = installed_plugin / "llamarec_toy.py"
    module.write_text(module.read_text().replace('name="ep-toy"', 'name="ml-100k"'))
    result = run_cli(["plugins"], installed_plugin)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: Dataset 'ml-100k' is registered by both plugin 'llamarec' and plugin 'toy'. Uninstall one of "
        "them, or choose plugins with LLAMAREC_PLUGINS."
    ]


def test_broken_plugin_names_itself(installed_plugin):
    (installed_plugin / "llamarec_toy.py").write_text("raise ImportError('missing dependency xyz')\n")
    result = run_cli(["--help"], installed_plugin)
    assert result.returncode == 1
    assert "Plugin 'toy' from llamarec-toy failed to load" in result.stderr and "LLAMAREC_PLUGINS" in result.stderr


def test_plugin_that_fails_while_registering_is_named():
    class Broken:
        @hookimpl
        def register_datasets(self, register):
            raise RuntimeError("boom")

    plugins.register_plugin(Broken(), name="broken")
    try:
        with pytest.raises(plugins.PluginError, match="Plugin 'broken' failed in register_datasets: RuntimeError"):
            plugins.datasets()
    finally:
        plugins.unregister_plugin("broken")


@pytest.mark.parametrize(
    "edit, message",
    [
        (("def register_datasets(register):", "def register_datasets(register, extra):"),
         "Plugin 'toy' from llamarec-toy does not fit llamarec's hooks (Plugin 'toy' for hook 'register_datasets'"),
        (("def register_commands(cli):", "def register_command(cli):"),
         "Plugin 'toy' does not fit llamarec's hooks (unknown hook 'register_command'"),
        (("@cli.command()", "raise KeyError('no cli')\n    @cli.command()"),
         "Plugin 'toy' failed in register_commands: KeyError('no cli')"),
    ],
    ids=["wrong-arguments", "misspelt-hook", "raises-in-register-commands"],
)  # fmt: skip
def test_a_plugin_that_does_not_fit_the_hooks_is_one_line_naming_it(installed_plugin, edit, message):
    """pluggy's validation errors and a failing register_commands were tracebacks, for every command (--help too)."""
    module = installed_plugin / "llamarec_toy.py"
    module.write_text(module.read_text().replace(*edit))
    result = run_cli(["--help"], installed_plugin)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {message}"), lines


@pytest.mark.parametrize(
    "name, retriever, message",
    [
        ("../../escape", None, "registered a retriever named '../../escape': a name is letters, digits"),
        (3, None, "registered a retriever without a name \\(got 3\\)"),
        ("bag", "instance", "registered retriever 'bag' as an instance of Bag, which is not a subclass"),
    ],
)
def test_a_plugin_registering_a_bad_name_or_an_instance_is_refused_when_registered(name, retriever, message):
    """A name with '../' was listed, and refused only when a command used it (it names folders in the work
    directory); an instance printed its whole repr."""
    from llamarec_cli.retrieval.lru import LRURec

    class Bag(LRURec):
        pass

    class Plugin:
        @hookimpl
        def register_retrievers(self, register):
            register(name, Bag(Bag.Config(), 10) if retriever == "instance" else Bag)

    plugins.register_plugin(Plugin(), name="bad-names")
    try:
        with pytest.raises(PluginError, match=f"Plugin 'bad-names' {message}"):
            plugins.retrievers()
    finally:
        plugins.unregister_plugin("bad-names")


def test_a_dataset_that_is_not_a_spec_is_named():
    class Plugin:
        @hookimpl
        def register_datasets(self, register):
            register("notaspec")

    plugins.register_plugin(Plugin(), name="not-a-spec")
    try:
        with pytest.raises(PluginError, match="Plugin 'not-a-spec' registered a dataset as str, not a llamarec_cli"):
            plugins.datasets()
    finally:
        plugins.unregister_plugin("not-a-spec")
