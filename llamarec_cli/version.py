"""llamarec's version, and the versions an artifact records: a leaf module that imports nothing of llamarec."""

from __future__ import annotations

import platform
from importlib import metadata

__version__ = "0.1.0"


def versions(*packages: str) -> dict[str, str | None]:
    """llamarec's version, then each of ``packages``' installed version (None if it is not installed), then
    Python's: what a manifest records so that a result can be traced to the software that made it."""
    return {"llamarec": __version__} | {p: _installed(p) for p in packages} | {"python": platform.python_version()}


def _installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
