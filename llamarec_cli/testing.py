"""For plugin authors' tests: a small synthetic dataset and a check that a retriever keeps the contract end to end.

    from llamarec_cli.testing import check_retriever

    def test_my_retriever(tmp_path):
        import llamarec_gru
        from llamarec_cli import plugins

        plugins.register_plugin(llamarec_gru, name="gru")  # a no-op once the plugin is installed
        check_retriever("gru", tmp_path)

``check_retriever`` trains the retriever for a few steps on a synthetic dataset (each user walks the item ids in
order from a random start: a pattern any sequential model learns), then loads it back, scores histories and exports
its candidates, as ``retrieve-train`` and ``candidates`` do. It runs in seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl

from .data.spec import DatasetSpec
from .hookspecs import hookimpl

CHECK_DATASET = "llamarec-testing-chain"  # a name no user dataset is likely to have


def chain_interactions(users: int, items: int, seed: int = 0) -> pl.DataFrame:
    """Each user walks the item ids in order from a random start (i, i+1, ...), 8 to 15 steps."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        start, length = int(rng.integers(items)), int(rng.integers(8, 16))
        rows += [(f"u{user}", f"i{(start + t) % items}", 100 * user + t) for t in range(length)]
    return pl.DataFrame(rows, schema=["user", "item", "timestamp"], orient="row")


def chain_dataset(name: str = CHECK_DATASET, users: int = 150, items: int = 40) -> DatasetSpec:
    """A DatasetSpec of ``chain_interactions``, titled "Item 0", "Item 1", ..."""
    titles = pl.DataFrame({"item": [f"i{i}" for i in range(items)], "title": [f"Item {i}" for i in range(items)]})
    return DatasetSpec(
        name=name,
        description="a synthetic chain dataset",
        read_interactions=lambda files: chain_interactions(users, items),
        read_titles=lambda files, needed: titles,
        retrieval_defaults={"max_len": 20, "batch_size": 16},
    )


class _CheckDataset:
    @hookimpl
    def register_datasets(self, register):
        register(chain_dataset())


def check_retriever(name: str, workdir: Path) -> dict:
    """Train, save, load, score and export retriever ``name`` (registered: installed or by ``register_plugin``) on
    a small synthetic dataset in ``workdir``; an AssertionError or a llamarec error says what broke. Returns the
    training manifest."""
    import torch

    from . import plugins
    from .stages.candidates import export_candidates, load_candidates
    from .stages.preprocess import preprocess
    from .stages.retrieve_train import load_retriever, train_retriever

    cls = plugins.retrievers().get(name)
    plugins.register_plugin(_CheckDataset(), name="llamarec-testing")
    try:
        dataset = preprocess(CHECK_DATASET, workdir=Path(workdir))
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        flags = {"max_epochs": 2, "val_every": 5, **({"hidden": 16} if "hidden" in fields else {})}
        manifest = train_retriever(CHECK_DATASET, workdir=Path(workdir), retriever=name, flags=flags, device="cpu")
        assert manifest["training"]["steps"] > 0, "no training step was taken"
        model, _ = load_retriever(Path(workdir), dataset, name)
        assert type(model) is cls, f"loaded back as {type(model).__name__}, not {cls.__name__}"
        histories = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])  # left-padded with 0, as llamarec passes them
        with torch.no_grad():
            scores = model.score(histories)
        expected = (2, dataset.num_items + 1)
        assert tuple(scores.shape) == expected, f"score() gave {tuple(scores.shape)}, expected {expected}"
        assert torch.isfinite(scores[:, 1:]).all(), "score() gave a non-finite score to a real item"
        export_candidates(CHECK_DATASET, workdir=Path(workdir), retriever=name, k=10, device="cpu")
        frame, _ = load_candidates(Path(workdir), dataset, name)
        assert frame["candidates"].list.len().min() == 10, "a user got fewer than 10 candidates"
        return manifest
    finally:
        plugins.unregister_plugin("llamarec-testing")
