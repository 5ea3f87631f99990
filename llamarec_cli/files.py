"""Files as every stage writes and checks them: a SHA-256, a JSON file written atomically, a folder swapped in.

A leaf below every stage (it imports nothing of llamarec), so that the data, retrieval and ranking stages share one
copy of each rather than one apiece.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

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
