"""llamarec tune-fusion: choose a trained ranker's fusion α again, on more validation users.

rank-train chooses α on the validation users its config names (``fusion_val_examples``, all by default); a ranker
trained with a smaller sample, or before that setting existed, can have it chosen again here without training again:
the best adapter scores the validation users (never ones it trained on), α is chosen on them by NDCG@10, and the
ranker's manifest is sealed again with it (``chosen_by: tune-fusion``). The test users play no part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ..artifacts import seal
from ..data.artifact import load_dataset
from ..errors import ConfigError
from ..files import write_json
from ..ranking.config import RankerConfig
from ..ranking.examples import valid_subset
from ..workspace import run_lock
from .candidates import load_candidates
from .evaluate import check_candidates_unchanged, load_ranker
from .rank_train import (
    _fusion,
    fusion_examples,
    load_ranker_manifest,
    rank_train_command,
    ranker_dir,
    sample,
    score_subset,
)


def tune_fusion(
    dataset_name: str,
    *,
    workdir: Path,
    ranker: str = "default",
    val_examples: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    templates_dir: Path | None = None,
    trust_remote_code: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Choose ``ranker``'s α on a seeded sample of ``val_examples`` validation users (all of them if None; with
    ``--negatives validation``, of the held-out ones), store it in its manifest and return the new fusion entry with
    the one it replaces (``previous``)."""
    for option, value in (("--val-examples", val_examples), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{option} must be at least 1 (got {value}).")
    dataset = load_dataset(workdir, dataset_name)
    folder = ranker_dir(workdir, dataset.name, ranker)
    load_ranker_manifest(workdir, dataset, ranker)  # a missing or damaged ranker is refused before the lock is taken
    what = f"rank-train or tune-fusion of ranker '{ranker}' on {dataset.name}"  # both hold this ranker's lock
    with run_lock(folder.parent, ranker, what):  # nothing rewrites the ranker while α is chosen
        manifest = load_ranker_manifest(workdir, dataset, ranker)
        config = dataclasses.replace(RankerConfig(**manifest["config"]), fusion_val_examples=val_examples)
        candidates, candidates_manifest = load_candidates(workdir, dataset, config.retriever)
        check_candidates_unchanged(
            manifest,
            candidates_manifest,
            dataset.name,
            ranker,
            rank_train_command(dataset.name, ranker, workdir, manifest["config"]),
        )
        val = valid_subset(dataset, candidates, "val", manifest["k"])
        early_stopping = sample(val.examples, config.max_val_examples, config.seed)
        examples = fusion_examples(val, early_stopping, config)
        loaded = load_ranker(
            dataset,
            workdir,
            ranker=ranker,
            device=device,
            templates_dir=templates_dir,
            trust_remote_code=trust_remote_code,
        )
        log(loaded.dtype_reason)
        log(f"Scoring {len(examples):,} validation users with ranker '{ranker}'")
        scores = score_subset(loaded.model, loaded.encoder, examples, batch_size)
        fusion = _fusion(config, examples, scores) | {"chosen_by": "tune-fusion"}
        previous = manifest.get("fusion")
        write_json(folder / "manifest.json", seal(manifest | {"fusion": fusion}))
    return fusion | {"previous": previous}
