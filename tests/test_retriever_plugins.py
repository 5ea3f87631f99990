"""Retriever plugins: the guide's example, every registered retriever end to end, and invalid registrations."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from conftest import REPO
from test_docs import python_block_after

from llamarec_cli import hookimpl, plugins
from llamarec_cli.errors import ConfigError, PluginError
from llamarec_cli.retrieval.checkpoint import retriever_dir
from llamarec_cli.retrieval.contract import Retriever
from llamarec_cli.retrieval.dropout import Dropout
from llamarec_cli.stages.candidates import export_candidates
from llamarec_cli.stages.retrieve_train import train_retriever
from llamarec_cli.testing import check_retriever


def small_flags(cls) -> dict:
    """A few steps of a small model: enough to exercise train, validate, save, load and export."""
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    return {"max_epochs": 2, "val_every": 5, **({"hidden": 16} if "hidden" in fields else {})}


@pytest.mark.parametrize("name", plugins.retrievers().names())
def test_every_registered_retriever_keeps_the_contract_end_to_end(name, workdir):
    """llamarec_cli.testing.check_retriever, the check plugin authors run: train, save, load, score, export."""
    manifest = check_retriever(name, workdir)
    assert 0 <= manifest["metrics"]["test"]["Recall@10"] <= 1


@pytest.mark.parametrize(
    "name", [n for n in plugins.retrievers().names() if plugins.retrievers().get(n).has_item_table()]
)
def test_every_retriever_with_an_item_table_trains_with_the_sampled_loss(name, chain, workdir):
    """The large-catalogue losses go through the contract, not one model's code."""
    flags = small_flags(plugins.retrievers().get(name)) | {"loss": "sampled", "uniform_negatives": 32, "max_epochs": 1}
    sampled = train_retriever("chain", workdir=workdir, retriever=name, flags=flags, device="cpu")
    assert sampled["config"]["loss"] == "sampled" and sampled["training"]["steps"] > 0


def test_plugin_guide_retriever_example_works(chain, workdir, tmp_path, monkeypatch):
    guide = (REPO / "docs" / "plugins.md").read_text()
    (tmp_path / "llamarec_bag.py").write_text(python_block_after(guide, "`llamarec_bag.py`"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import llamarec_bag

    plugins.register_plugin(llamarec_bag, name="bag")
    try:
        manifest = train_retriever("chain", workdir=workdir, retriever="bag", flags={"max_epochs": 3}, device="cpu")
        assert manifest["plugin"] == "bag" and manifest["config"]["hidden"] == 64
        flags = {"max_epochs": 3, "loss": "chunked"}  # the same loss, a slice of the catalogue at a time
        chunked = train_retriever("chain", workdir=workdir, retriever="bag", flags=flags, device="cpu")
        assert chunked["metrics"]["test"] == pytest.approx(manifest["metrics"]["test"], abs=1e-4)
        export_candidates("chain", workdir=workdir, retriever="bag", device="cpu")
        assert (retriever_dir(workdir, "chain", "bag") / "model.safetensors").is_file()
    finally:
        plugins.unregister_plugin("bag")
    # the guide's test of the same plugin with check_retriever, run as a plugin author would
    (tmp_path / "guide_check.py").write_text(python_block_after(guide, "is the whole check"))
    try:
        import guide_check

        guide_check.test_my_retriever(tmp_path / "check")
        assert "bag" not in plugins.retrievers().names()  # registered for the test only
    finally:
        sys.modules.pop("llamarec_bag", None)
        sys.modules.pop("guide_check", None)


def test_a_registered_non_retriever_is_refused_with_the_plugin_named():
    from llamarec_cli import hookimpl

    class Wrong:
        @hookimpl
        def register_retrievers(self, register):
            register("wrong", object)

    plugins.register_plugin(Wrong(), name="wrong-plugin")
    try:
        with pytest.raises(PluginError, match="'wrong-plugin'.*not a subclass of llamarec_cli.Retriever"):
            plugins.retrievers()
    finally:
        plugins.unregister_plugin("wrong-plugin")


def test_fast_dropout_keeps_the_rate_and_the_expectation():
    torch.manual_seed(0)
    layer = Dropout(0.2)
    x = torch.ones(400, 1000)
    y = layer(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.8) < 0.005 and torch.allclose(y[y != 0], torch.tensor(1 / 0.8))
    assert abs(y.mean().item() - 1) < 0.01
    columns = (y != 0).float().view(-1, 4).mean(0)  # each 16-bit field of a 64-bit word is uniform
    assert torch.allclose(columns, torch.full((4,), 0.8), atol=0.01)
    assert torch.equal(layer.eval()(x), x)


class Bag(Retriever):
    """A bag-of-items retriever whose train_queries can be broken on purpose."""

    broken: str = ""

    def __init__(self, config, num_items):
        super().__init__(config, num_items)
        self.items = torch.nn.Embedding(num_items + 1, 8, padding_idx=0)

    def train_queries(self, windows):
        queries = self.items(windows[:, :-1]).reshape(-1, 8)
        targets = windows[:, 1:].reshape(-1)  # padding positions included: targets of 0
        if self.broken != "padding":
            queries, targets = queries[targets > 0], targets[targets > 0]
        if self.broken == "short":
            targets = targets[:-1]
        if self.broken == "float":
            targets = targets.float()
        if self.broken == "int32":  # not broken: made int64 for the losses
            targets = targets.int()
        return queries, targets

    def queries(self, histories):
        queries = self.items(histories[:, -1])
        return queries[:, :-1] if self.broken == "narrow queries" else queries

    def item_table(self):
        if self.broken == "short table":
            return self.items.weight[:-1], None
        if self.broken == "wrong bias":
            return self.items.weight, torch.zeros(3)
        return self.items.weight, None


class BagPlugin:
    @hookimpl
    def register_retrievers(self, register):
        register("bag-test", Bag)


@pytest.fixture
def bag_registered():
    plugins.register_plugin(BagPlugin(), name="bag-test-plugin")
    yield
    plugins.unregister_plugin("bag-test-plugin")


@pytest.mark.parametrize(
    "broken, message",
    [
        ("padding", "returned a target outside 1..40: keep only the positions that predict an item"),
        ("short", "returned .* queries but .* targets"),
        ("float", "must return item ids \\(int64\\) as targets, not torch.float32"),
    ],
)
def test_a_broken_train_queries_is_named_not_a_deep_traceback(broken, message, bag_registered, workdir, monkeypatch):
    monkeypatch.setattr(Bag, "broken", broken)
    with pytest.raises(ConfigError, match=f"Bag.train_queries {message}"):
        check_retriever("bag-test", workdir)


@pytest.mark.parametrize(
    "broken, message",
    [
        ("short table", "Bag.item_table must return a table of N \\+ 1 = 41 rows .* got \\(40, 8\\)"),
        ("wrong bias", "Bag.item_table must return a bias of N \\+ 1 = 41 values, or None; got \\(3,\\)"),
        ("narrow queries", "Bag.queries must return one query per history, as wide as the item table"),
    ],
)  # fmt: skip
def test_a_broken_item_table_or_queries_is_named_not_a_deep_traceback(
    broken, message, bag_registered, workdir, monkeypatch
):
    """A table one row short failed with "index 3650 is out of bounds" deep in a loss, in check_retriever too."""
    monkeypatch.setattr(Bag, "broken", broken)
    with pytest.raises(ConfigError, match=message):
        check_retriever("bag-test", workdir)


def test_int32_targets_are_taken_as_item_ids(bag_registered, workdir, monkeypatch):
    monkeypatch.setattr(Bag, "broken", "int32")
    assert check_retriever("bag-test", workdir)["training"]["steps"] > 0


def test_a_retriever_may_mix_its_own_loss_or_score_with_the_default_one():
    class OwnLoss(Bag):  # trains with its own loss, ranks through queries and the table
        train_queries = Retriever.train_queries

        def loss(self, windows):
            return self.items.weight.sum()

    class OwnScore(Bag):  # trains through the table, ranks with its own score
        queries = Retriever.queries

        def score(self, histories):
            return torch.zeros(len(histories), self.num_items + 1)

    assert OwnLoss.missing_methods() == [] and OwnScore.missing_methods() == [] and Bag.missing_methods() == []


def test_a_retriever_that_implements_neither_route_is_refused_when_registered():
    from llamarec_cli import hookimpl

    class Half(Retriever):
        def train_queries(self, windows): ...

    class HalfPlugin:
        @hookimpl
        def register_retrievers(self, register):
            register("half", Half)

    plugins.register_plugin(HalfPlugin(), name="half-plugin")
    try:
        with pytest.raises(
            PluginError,
            match=r"'half' of plugin 'half-plugin' does not implement loss \(or train_queries and item_table\) nor",
        ):
            plugins.retrievers()
    finally:
        plugins.unregister_plugin("half-plugin")


def test_an_in_process_plugin_registered_twice_is_still_refused():
    from llamarec_cli import hookimpl

    class Once:
        @hookimpl
        def register_datasets(self, register): ...

    plugin = Once()
    plugins.register_plugin(plugin, name="once")
    try:
        with pytest.raises(ValueError):
            plugins.register_plugin(plugin, name="twice")
    finally:
        plugins.unregister_plugin("once")


def test_registering_an_installed_plugin_again_changes_nothing():
    """A plugin's own tests call register_plugin whether or not the plugin is installed (then loaded already)."""
    from llamarec_cli import builtins

    plugins.register_plugin(builtins, name="my-test-name")
    plugins.unregister_plugin("my-test-name")
    assert "lrurec" in plugins.retrievers().names()


def test_a_retriever_whose_plugin_is_gone_names_the_plugin(workdir):
    from llamarec_cli.errors import ArtifactError
    from llamarec_cli.stages.retrieve_train import load_retriever
    from llamarec_cli.testing import CHECK_DATASET

    plugins.register_plugin(BagPlugin(), name="bag-test-plugin")
    try:
        check_retriever("bag-test", workdir)
    finally:
        plugins.unregister_plugin("bag-test-plugin")
    from llamarec_cli.data.artifact import load_dataset

    with pytest.raises(ArtifactError, match="is 'bag-test' of plugin 'bag-test-plugin', which is not loaded now"):
        load_retriever(workdir, load_dataset(workdir, CHECK_DATASET), "bag-test")
