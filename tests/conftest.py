from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LLAMAREC_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test reads the user's cache or the network, or depends on the caller's environment."""
    for name in ("LLAMAREC_WORKDIR", "LLAMAREC_RAW_DIR", "LLAMAREC_PLUGINS", "LLAMAREC_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLAMAREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LLAMAREC_OFFLINE", "1")


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path / "runs"


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these checks need ../shared beside the repository (or LLAMAREC_SHARED)")
    return path


def write_amazon_ratings(path: Path, rows: list[tuple[str, str, float, int]]) -> Path:
    """The 2014 ratings CSV: no header; user, asin, rating, unix time."""
    path.write_text("".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    return path


def write_meta_2014(path: Path, records: list[dict]) -> Path:
    """The 2014 metadata: one Python-literal dict per line, gzipped."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(repr(record) + "\n")
    return path


def write_meta_2018(path: Path, records: list[dict]) -> Path:
    """The 2018 metadata: strict JSON lines, gzipped."""
    import json

    with gzip.open(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path
