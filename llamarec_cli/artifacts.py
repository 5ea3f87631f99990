"""Artifacts as every stage seals, checks and finishes them, and the training state that ``--resume`` continues from.

A manifest is sealed with the SHA-256 of its own content and refused when it no longer matches; a run works in a
partial folder and is finished by writing its manifest last and swapping the folder into place; the resumable state
is one safetensors file whose metadata holds the counters. Shared by the retriever, the candidates and the ranker.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from .errors import ArtifactError
from .files import load_weights, replace_dir, save_tensors, sha256_of, write_json
from .layout import Workdir


def read_json(path: Path, rerun: str):
    """A JSON artifact file, or one ArtifactError that names it and says what to rerun."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing. Rerun: {rerun}") from None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise ArtifactError(f"{path} is unreadable or corrupted ({exc}). Rerun: {rerun}") from None


SEAL = "manifest_sha256"


def seal(manifest: dict) -> dict:
    """The manifest with the SHA-256 of its own content: an edited or bit-flipped manifest (an α, a checksum, a
    dataset name) is refused rather than believed."""
    return {**manifest, SEAL: _content_digest(manifest)}


def read_sealed(
    path: Path, rerun: str, *, format: str | None = None, version: int | None = None, named: Path | None = None
) -> dict:
    """A manifest written through ``seal``, refused when missing, unreadable, or not what was written; with
    ``format`` and ``version``, also when another llamarec wrote it (the refusal names ``named``, else ``path``)."""
    manifest = read_json(path, rerun)
    if not isinstance(manifest, dict) or manifest.get(SEAL) != _content_digest(manifest):
        raise ArtifactError(f"{path} is corrupted or was edited (its checksum does not match). Rerun: {rerun}")
    if format is not None and (manifest.get("format"), manifest.get("format_version")) != (format, version):
        raise ArtifactError(f"{named or path} was written by an incompatible llamarec version. Rerun: {rerun}")
    return manifest


def _content_digest(manifest: dict) -> str:
    content = {k: v for k, v in manifest.items() if k != SEAL}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in a checkpoint folder but its manifest, by relative path: recorded when the checkpoint
    is finished, verified when it is loaded, so a corrupted or swapped file is refused rather than used."""
    return {
        str(path.relative_to(folder)): sha256_of(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }


def verify_files(folder: Path, manifest: dict, rerun: str) -> None:
    """Refuse a checkpoint whose files differ from those its manifest recorded."""
    recorded = manifest.get("files")
    if not isinstance(recorded, dict) or not recorded:
        raise ArtifactError(f"{folder / 'manifest.json'} records no file checksums (an older llamarec). Rerun: {rerun}")
    for name, digest in recorded.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing. Rerun: {rerun}")
        if sha256_of(path) != digest:
            raise ArtifactError(
                f"{path} is corrupted or truncated (its SHA-256 differs from the manifest's). Rerun: {rerun}"
            )


def finish(partial: Path, final: Path, manifest: dict) -> None:
    """Write the manifest (the mark of a complete checkpoint; it names its ``format`` and ``format_version``), drop
    the resume state and swap into place.

    The resume state goes only once the manifest is written: a disk that fills up here leaves a run that ``--resume``
    can still finish."""
    if "format" not in manifest or "format_version" not in manifest:  # read_sealed would refuse it later
        raise ValueError("a finished artifact's manifest names its format and format_version")
    files = {name: digest for name, digest in file_hashes(partial).items() if not _run_state(name)}
    manifest = {**manifest, "files": files}
    write_json(partial / "manifest.json", seal(manifest))
    shutil.rmtree(Workdir.training(partial), ignore_errors=True)
    (partial / "run.json").unlink(missing_ok=True)
    replace_dir(partial, final)


def _run_state(name: str) -> bool:
    return name == "run.json" or name.startswith("training/")


# The resumable training state: one safetensors file whose metadata holds the counters (step, best, ...), so tensors
# and counters can never disagree. Shared by the retriever and ranker trainers.


def save_state(path: Path, tensors: dict[str, torch.Tensor], counters: dict) -> None:
    save_tensors(path, tensors, metadata={"counters": json.dumps(counters)})


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and counters saved by ``save_state``; a damaged file is refused with the way out."""
    from safetensors import safe_open

    try:
        tensors = load_weights(path)
        with safe_open(path, framework="pt") as f:
            return tensors, json.loads((f.metadata() or {})["counters"])
    except (ArtifactError, KeyError, ValueError) as exc:  # JSONDecodeError is a ValueError
        detail = exc if isinstance(exc, ArtifactError) else f"{path} lacks its counters."
        raise ArtifactError(
            f"The interrupted run cannot be resumed: {detail} Start afresh: the same command with --restart "
            "instead of --resume."
        ) from None


def optimizer_tensors(optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat tensors (``optim.<index>.<name>``), for safetensors."""
    tensors = {}
    for index, values in optimizer.state_dict()["state"].items():
        tensors |= {f"optim.{index}.{key}": torch.as_tensor(value) for key, value in values.items()}
    return tensors


def optimizer_state(optimizer, tensors: dict, device) -> dict:
    """The inverse of ``optimizer_tensors``: a state dict ``optimizer.load_state_dict`` accepts."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    return {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}


def rng_tensors(device) -> dict[str, torch.Tensor]:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":  # dropout on the GPU draws from the CUDA generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    return tensors


def restore_rng(tensors: dict, device) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.device(device).type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
