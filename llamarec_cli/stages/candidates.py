"""``llamarec candidates`` as a library call: the retriever's top-k for every validation and test user.

Written to ``<workdir>/<dataset>/candidates/<retriever>.parquet`` (one row per user and split: ``split``, ``user``,
``target``, ``candidates`` and ``scores`` in score order, ``hit``) with ``<retriever>.json`` beside it (metrics,
hit-rate@k, and the checksums of the dataset and the retriever weights, so the ranker can refuse stale candidates).

Runs unchanged under ``accelerate launch``: each process ranks a contiguous share of the users, and the main process
writes the same file one process would have.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import torch

from .. import settings
from ..artifacts import read_sealed, seal
from ..data.artifact import Dataset, load_dataset
from ..errors import ArtifactError, ConfigError
from ..files import sha256_of, write_json
from ..layout import Workdir
from ..retrieval.checkpoint import retriever_dir
from ..retrieval.data import eval_set
from ..retrieval.evaluate import top_k
from ..workspace import ensure_writable
from .retrieve_train import DEFAULT_RETRIEVER, launched_accelerator, load_retriever, rerun_command

FORMAT = "llamarec.candidates"
FORMAT_VERSION = 1
SPLITS = ("val", "test")


def candidates_paths(workdir: Path, dataset: str, retriever: str) -> tuple[Path, Path]:
    return Workdir(workdir).candidates(dataset, retriever)


def export_candidates(
    dataset_name: str | Dataset, *, workdir: Path, retriever: str = DEFAULT_RETRIEVER, k: int = 20, device: str = "auto"
) -> dict:
    """Write the top-k candidates and return the manifest (metrics and hit-rate@k per split)."""
    if k < 1:
        raise ConfigError(f"--k must be at least 1 (got {k}).")
    dataset = load_dataset(workdir, dataset_name)  # a name, or the Dataset the pipeline loaded
    dataset_name = dataset.name
    if k >= dataset.num_items:  # the lists would hold every unseen item and hit-rate@k say nothing
        raise ConfigError(
            f"--k {k} is not below the {dataset.num_items:,} items of {dataset_name}; choose a smaller k."
        )
    parquet, manifest_path = candidates_paths(workdir, dataset_name, retriever)
    ensure_writable(parquet.parent)
    accelerator = launched_accelerator(device)
    model, retriever_manifest = load_retriever(
        workdir, dataset, retriever, str(accelerator.device) if accelerator else device
    )
    device_ = next(model.parameters()).device
    frames, summary = [], {}
    for split in SPLITS:
        data = eval_set(dataset, split)
        items, scores, metrics = top_k(model, data, device_, k, accelerator)
        check_scores(scores, retriever, split, dataset_name, workdir)
        frame = pl.DataFrame(
            {
                "split": pl.Series([split] * len(data), dtype=pl.Enum(SPLITS)),
                "user": pl.Series(data.users, dtype=pl.UInt32),
                "target": pl.Series(data.targets, dtype=pl.UInt32),
            }
        ).hstack(candidate_lists(items, scores))
        frame = frame.with_columns(hit=pl.col("candidates").list.contains(pl.col("target")))
        frames.append(frame)
        hit_rate = frame["hit"].mean() if frame.height else 0.0
        summary[split] = {"users": frame.height, "hits": int(frame["hit"].sum()), "hit_rate": hit_rate, **metrics}

    if accelerator is not None and not accelerator.is_main_process:
        accelerator.wait_for_everyone()  # until the main process has written
        return read_sealed(manifest_path, "", format=FORMAT, version=FORMAT_VERSION)
    tmp = parquet.with_name(f".{parquet.name}.tmp-{os.getpid()}")
    pl.concat(frames).write_parquet(tmp, compression="zstd")
    os.replace(tmp, parquet)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset": {"name": dataset_name, "checksum": dataset.checksum},
        "retriever": retriever,
        "retriever_weights_sha256": sha256_of(retriever_dir(workdir, dataset_name, retriever) / "model.safetensors"),
        "retriever_config": retriever_manifest["config"],
        "k": k,
        "file_sha256": sha256_of(parquet),
        "splits": summary,
    }
    manifest = seal(manifest)
    write_json(manifest_path, manifest)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return manifest


def check_scores(scores: torch.Tensor, retriever: str, split: str, dataset: str, workdir: Path) -> None:
    """-inf marks the padding of a user with fewer than k unseen items; NaN or +inf is a broken retriever, whose
    candidates would be dropped as padding (empty lists, metrics of 0) without a word."""
    broken = scores.isnan() | scores.isposinf()
    if bool(broken.any()):
        users = int(broken.any(dim=1).sum())
        raise ArtifactError(
            f"Retriever '{retriever}' scores items NaN or +inf for {users:,} of {len(scores):,} {split} users of "
            f"{dataset}: its queries or scores are not finite numbers (a diverged or broken model). Nothing was "
            f"exported. Retrain it: {rerun_command(dataset, retriever, workdir)}"
        )


def candidate_lists(items: torch.Tensor, scores: torch.Tensor) -> pl.DataFrame:
    """Each user's candidates and scores (users x k tensors) as list columns, built by polars from the arrays (as
    Python lists, 2M users took 48 s and 5 GiB). A non-finite score (a user who has seen almost everything has fewer
    than k unseen items) is left out with its item."""
    width = items.size(1)
    frame = pl.DataFrame(
        {
            "candidates": pl.Series(items.numpy()).cast(pl.Array(pl.UInt32, width)).arr.to_list(),
            "scores": pl.Series(scores.numpy()).cast(pl.Array(pl.Float32, width)).arr.to_list(),
        }
    )
    if bool(torch.isfinite(scores).all()):
        return frame
    keep = pl.col("scores").list.eval(pl.element().is_finite().arg_true())
    return frame.select(pl.col("candidates").list.gather(keep), pl.col("scores").list.gather(keep))


def load_candidates(workdir: Path, dataset: Dataset, retriever: str = DEFAULT_RETRIEVER) -> tuple[pl.DataFrame, dict]:
    """The candidates of ``retriever`` for ``dataset``, refused when missing, altered or stale."""
    parquet, manifest_path = candidates_paths(workdir, dataset.name, retriever)
    rerun = settings.command_for(f"llamarec candidates {dataset.name} --retriever {retriever}", workdir)
    if not manifest_path.is_file() or not parquet.is_file():
        from .. import plugins

        plugins.retrievers().get(retriever)  # a name nothing registers lists the known ones, not a failing command
        raise ArtifactError(f"No candidates of '{retriever}' for {dataset.name} in {workdir}. Run first: {rerun}")
    manifest = read_sealed(manifest_path, rerun, format=FORMAT, version=FORMAT_VERSION)
    weights = retriever_dir(workdir, dataset.name, retriever) / "model.safetensors"
    try:
        dataset_checksum, weights_sha = manifest["dataset"]["checksum"], manifest["retriever_weights_sha256"]
        file_sha = manifest["file_sha256"]
    except (KeyError, TypeError):
        raise ArtifactError(f"{manifest_path} is damaged (a field is missing). Rerun: {rerun}") from None
    if dataset_checksum != dataset.checksum:
        raise ArtifactError(f"{parquet} was made from another version of dataset '{dataset.name}'. Rerun: {rerun}")
    if weights.is_file() and sha256_of(weights) != weights_sha:
        raise ArtifactError(f"{parquet} was made by an earlier training of '{retriever}'. Rerun: {rerun}")
    if sha256_of(parquet) != file_sha:
        raise ArtifactError(f"{parquet} is altered or truncated. Rerun: {rerun}")
    return pl.read_parquet(parquet), manifest
