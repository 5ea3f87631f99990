"""Retriever plugins: the guide's example, every registered retriever end to end, and invalid registrations."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from conftest import REPO
from test_docs import python_block_after

from llamarec_cli import plugins
from llamarec_cli.errors import PluginError
from llamarec_cli.retrieval.checkpoint import retriever_dir
from llamarec_cli.retrieval.dropout import Dropout
from llamarec_cli.stages.candidates import export_candidates, load_candidates
from llamarec_cli.stages.retrieve_train import load_retriever, train_retriever


def small_flags(cls) -> dict:
    """A few steps of a small model: enough to exercise train, validate, save, load and export."""
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    return {"max_epochs": 2, "val_every": 5, **({"hidden": 16} if "hidden" in fields else {})}


@pytest.mark.parametrize("name", plugins.retrievers().names())
def test_every_registered_retriever_trains_saves_loads_and_exports(name, chain, workdir):
    cls = plugins.retrievers().get(name)
    manifest = train_retriever("chain", workdir=workdir, retriever=name, flags=small_flags(cls), device="cpu")
    assert manifest["training"]["steps"] > 0 and 0 <= manifest["metrics"]["test"]["Recall@10"] <= 1
    model, _ = load_retriever(workdir, chain, name)
    assert type(model) is cls
    histories = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])
    with torch.no_grad():
        scores = model.score(histories)
    assert scores.shape == (2, chain.num_items + 1) and torch.isfinite(scores[:, 1:]).all()
    export_candidates("chain", workdir=workdir, retriever=name, k=10, device="cpu")
    frame, _ = load_candidates(workdir, chain, name)
    assert frame.height == 2 * chain.users.height and frame["candidates"].list.len().min() == 10
    if cls.has_item_table():  # the large-catalogue losses go through the contract, not one model's code
        flags = small_flags(cls) | {"loss": "sampled", "uniform_negatives": 32, "max_epochs": 1}
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
        sys.modules.pop("llamarec_bag", None)


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
