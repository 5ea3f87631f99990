"""Where llamarec reads and writes: one place for the environment variables and their defaults."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

ENV_WORKDIR = "LLAMAREC_WORKDIR"
ENV_RAW_DIR = "LLAMAREC_RAW_DIR"
ENV_CACHE_DIR = "LLAMAREC_CACHE_DIR"
ENV_OFFLINE = "LLAMAREC_OFFLINE"
ENV_DEBUG = "LLAMAREC_DEBUG"

DEFAULT_WORKDIR = "llamarec-runs"


def workdir(option: Path | None = None) -> Path:
    """--workdir, else $LLAMAREC_WORKDIR, else ./llamarec-runs."""
    return Path(option or os.environ.get(ENV_WORKDIR) or DEFAULT_WORKDIR)


def command_for(command: str, folder: Path | None) -> str:
    """``command`` as it must be typed to act on the work directory ``folder``: with --workdir unless a bare command
    finds it there (a suggested command that the user copies must not act on another work directory)."""
    if folder is None or Path(folder).resolve() == workdir().resolve():
        return command
    return f"{command} --workdir {shlex.quote(str(folder))}"


def raw_dir(option: Path | None = None) -> Path | None:
    """--raw-dir, else $LLAMAREC_RAW_DIR, else none."""
    value = option or os.environ.get(ENV_RAW_DIR)
    return Path(value) if value else None


def cache_dir() -> Path:
    """$LLAMAREC_CACHE_DIR, else $XDG_CACHE_HOME/llamarec, else ~/.cache/llamarec."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llamarec"


def _flag(variable: str) -> bool:
    """An on/off environment variable read as huggingface_hub reads HF_HUB_OFFLINE: 1, true, yes or on (any case)
    mean on; anything else (0, false, no, off, empty) off."""
    return os.environ.get(variable, "").strip().upper() in ("1", "TRUE", "YES", "ON")


def offline() -> bool:
    """$LLAMAREC_OFFLINE=1 (or HF_HUB_OFFLINE=1): never try the network."""
    return _flag(ENV_OFFLINE) or _flag("HF_HUB_OFFLINE")


def debug() -> bool:
    return _flag(ENV_DEBUG)
