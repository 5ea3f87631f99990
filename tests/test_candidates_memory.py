"""Candidate export streams users: its peak memory does not grow with users x items (200,000 items here)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import polars as pl

from llamarec_cli.data.artifact import write_dataset
from llamarec_cli.data.pipeline import Tables

USERS, ITEMS, LENGTH = 1000, 200_000, 12


def wide_dataset(workdir):
    """1,000 users with 12 interactions each over 200,000 items, written directly as an artifact."""
    rng = np.random.default_rng(0)
    items = rng.integers(1, ITEMS + 1, size=(USERS, LENGTH))
    split = ["train"] * (LENGTH - 2) + ["val", "test"]
    interactions = pl.DataFrame(
        {
            "user": pl.Series(np.repeat(np.arange(1, USERS + 1), LENGTH), dtype=pl.UInt32),
            "item": pl.Series(items.ravel(), dtype=pl.UInt32),
            "timestamp": pl.Series(np.tile(np.arange(LENGTH), USERS), dtype=pl.Int64),
            "split": pl.Series(split * USERS, dtype=pl.Enum(["train", "val", "test"])),
        }
    )
    ids = pl.Series(np.arange(1, ITEMS + 1), dtype=pl.UInt32)
    items_table = pl.DataFrame({"item": ids, "original_id": ids.cast(pl.String), "title": ids.cast(pl.String)})
    users = pl.DataFrame({"user": pl.Series(np.arange(1, USERS + 1), dtype=pl.UInt32)})
    users = users.with_columns(original_id=pl.col("user").cast(pl.String))
    return write_dataset(workdir, "wide", Tables(interactions, items_table, users), {"description": "wide"})


def test_candidate_export_memory_does_not_grow_with_users_times_items(workdir):
    import torch

    from llamarec_cli.retrieval.lru import LRURec, LRURecConfig
    from llamarec_cli.stages.retrieve_train import write_checkpoint

    dataset = wide_dataset(workdir)
    torch.manual_seed(0)
    write_checkpoint(workdir, dataset, "lrurec", LRURec(LRURecConfig(), ITEMS), {"metrics": {}})
    script = textwrap.dedent(
        f"""
        import resource, json
        from pathlib import Path
        from llamarec_cli.data.artifact import load_dataset
        from llamarec_cli.stages.retrieve_train import load_retriever
        from llamarec_cli.stages.candidates import export_candidates
        workdir = Path({str(workdir)!r})
        load_retriever(workdir, load_dataset(workdir, "wide"), "lrurec")
        loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        manifest = export_candidates("wide", workdir=workdir, device="cpu")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"loaded_kib": loaded, "peak_kib": peak, "users": manifest["splits"]["test"]["users"]}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    report = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert report["users"] == USERS
    full_matrix_mib = 2 * USERS * (ITEMS + 1) * 4 / 2**20  # both splits' score vectors: what the reference kept
    growth_mib = (report["peak_kib"] - report["loaded_kib"]) / 1024
    assert full_matrix_mib > 1500
    assert growth_mib < 400, f"export grew the process by {growth_mib:.0f} MiB"
