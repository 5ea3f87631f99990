"""Files as every stage writes and checks them: a SHA-256, a JSON file written atomically, a folder swapped in,
tensors in safetensors.

Below every stage (it imports only llamarec's errors), so that the data, retrieval and ranking stages and the
retriever contract share one copy of each rather than one apiece.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .errors import ArtifactError

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, data) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def replace_dir(new: Path, final: Path) -> None:
    """Move the complete folder ``new`` to ``final``, in place of the folder there (if any).

    The old folder is first renamed aside to ``.<name>.old`` (one a crash left there is removed before), then
    removed once ``new`` stands in its place: ``final`` is only ever missing between two renames.
    """
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def save_tensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


def load_weights(path: Path, device="cpu") -> dict:
    """Read a safetensors file, turning a truncated or corrupted file into an actionable error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ArtifactError(f"{path} is missing.")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path} is corrupted or truncated ({exc}).") from exc
