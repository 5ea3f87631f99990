"""Writing into the work directory: one run per artifact at a time, and writability proved before the work.

``writing``: an ``OSError`` met while making room for an artifact becomes the one-line ``WorkdirError``.

``run_lock``: an exclusive lock held while a stage writes an artifact.
The operating system releases the lock when the process dies, however it dies, so a crashed run never blocks the next
one; a second run on the same artifact is refused at once, with the holder's pid, instead of being mistaken for an
interrupted run (and having its live state deleted by ``--restart``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import ArtifactError, WorkdirError


def main_process() -> bool:
    """Whether this is the main process (or the only one) of an ``accelerate launch``: the one that holds the locks,
    writes the artifacts and speaks to the user."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def run_lock(folder: Path, name: str, what: str):
    """Hold ``<folder>/.<name>.lock`` for the block; ``what`` names the run in the refusal ("retrieve-train of ...").

    Creating the folder and writing the pid file also proves, before any work, that the work directory is writable.
    """
    lock_path, pid_path = folder / f".{name}.lock", folder / f".{name}.pid"
    with writing(folder):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = FileLock(lock_path, timeout=0)
            lock.acquire()
        except Timeout:  # an OSError too: caught first
            holder = _read_pid(pid_path)
            raise ArtifactError(
                f"Another {what} is running (pid {holder or 'unknown'}); wait for it to finish, or stop it first."
            ) from None
    try:
        with writing(folder):
            pid_path.write_text(str(os.getpid()))
    except WorkdirError:
        lock.release()
        raise
    try:
        yield
    finally:
        pid_path.unlink(missing_ok=True)
        lock.release()


def _read_pid(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def ensure_writable(folder: Path, *, workdir: bool = False) -> None:
    """Create ``folder`` and write a probe file in it, so that an unwritable work directory is refused before minutes
    of work rather than after (disk full can still strike later: the CLI turns it into one line, and every artifact
    is written beside the old one and swapped in, so the old one survives). ``workdir``: as ``writing``'s."""
    probe = folder / f".write-probe-{os.getpid()}"
    with writing(folder, workdir=workdir):
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()


@contextmanager
def writing(path: Path, *, workdir: bool = False):
    """Turn an ``OSError`` in the block (no permission, disk full, read-only) into the one-line ``WorkdirError``
    that names ``path``; ``workdir=True``: ``path`` is the work directory itself, and the error says how to choose
    another."""
    try:
        yield
    except OSError as exc:
        if workdir:
            raise WorkdirError.unwritable(path, exc) from exc
        raise WorkdirError(f"Cannot write to {path}: {exc.strerror or exc}.") from exc
