"""The retriever checkpoint in the work directory, and the training state that ``--resume`` continues from.

Layout: ``<workdir>/<dataset>/retriever/<name>/`` holds ``model.safetensors`` + ``config.json`` (the best model,
written by ``Retriever.save``) and ``manifest.json`` (dataset checksum, item count, effective config, metrics,
versions). A run trains in ``.<name>.partial/`` beside it (with ``training/``, the resumable state) and is renamed
into place only when complete, so an interrupted run leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..errors import ArtifactError

FORMAT = "llamarec.retriever"
FORMAT_VERSION = 1


def retriever_dir(workdir: Path, dataset: str, name: str) -> Path:
    return workdir / dataset / "retriever" / name


def partial_dir(workdir: Path, dataset: str, name: str) -> Path:
    return workdir / dataset / "retriever" / f".{name}.partial"


def write_json(path: Path, data) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


def load_weights(path: Path, device="cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning a truncated or corrupted file into an actionable error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ArtifactError(f"{path} is missing.")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path} is corrupted or truncated ({exc}).") from exc


def finish(partial: Path, final: Path, manifest: dict) -> None:
    """Write the manifest (the mark of a complete checkpoint), drop the resume state and swap into place."""
    shutil.rmtree(partial / "training", ignore_errors=True)
    write_json(partial / "manifest.json", {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION})
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(workdir: Path, dataset, name: str) -> dict:
    """The manifest of a complete checkpoint that matches ``dataset``, or an error that says what to rerun."""
    folder = retriever_dir(workdir, dataset.name, name)
    rerun = f"llamarec retrieve-train {dataset.name} --retriever {name}"
    path = folder / "manifest.json"
    if not path.is_file():
        hint = (
            " (an interrupted run can continue with --resume)"
            if partial_dir(workdir, dataset.name, name).exists()
            else ""
        )
        raise ArtifactError(f"No trained retriever '{name}' for {dataset.name} in {workdir}{hint}. Run first: {rerun}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ArtifactError(f"{path} is corrupted ({exc}). Rerun: {rerun}") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{folder} was written by an incompatible llamarec version. Rerun: {rerun}")
    if manifest["dataset"]["checksum"] != dataset.checksum or manifest["num_items"] != dataset.num_items:
        raise ArtifactError(
            f"The retriever in {folder} was trained on another version of dataset '{dataset.name}' "
            f"({manifest['num_items']:,} items, checksum {manifest['dataset']['checksum'][:12]}; the dataset now has "
            f"{dataset.num_items:,} items, checksum {dataset.checksum[:12]}). Rerun: {rerun}"
        )
    return manifest
