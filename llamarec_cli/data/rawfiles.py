"""Find a dataset's raw files: an explicit raw directory, then the cache, then a download.

Downloads stream to a ``.part`` file (resumed with an HTTP range request after an interruption), are checked
against the pinned SHA-256 where one is known, and only then are moved into the cache, so the cache never holds a
half-written file.
"""

from __future__ import annotations

import gzip
import shutil
import sys
import time
import zipfile
import zlib
from pathlib import Path

from .. import settings
from ..errors import ConfigError, DataFormatError, LlamarecError, RawDataMissingError, WorkdirError
from ..files import sha256_of
from .spec import DatasetSpec, RawFile, RawFiles

RETRIES = 3
CHUNK = 1 << 20


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _find_in(directory: Path, raw: RawFile) -> Path | None:
    """The file itself, an alias, or the same inside the archive's extracted folder."""
    folders = [directory]
    if raw.archive:
        folders.append(directory / Path(raw.archive).stem)
    for folder in folders:
        for name in (raw.name, *raw.aliases):
            if (folder / name).is_file():
                return folder / name
    return None


def _extract_member(archive: Path, name: str, dest: Path) -> Path:
    """Copy the archive member whose base name is ``name`` to ``dest`` (atomically)."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if Path(m).name == name]
            if not members:
                raise DataFormatError(archive, f"archive has no member named {name}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(members[0]) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
            tmp.replace(dest)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        tmp.unlink(missing_ok=True)
        raise DataFormatError(archive, f"not a valid zip archive ({exc}); delete it and try again") from exc
    return dest


def _check_pinned(raw: RawFile, path: Path, *, downloaded: bool) -> None:
    if raw.sha256 is None:
        return
    actual = sha256_of(path)
    if actual == raw.sha256:
        return
    if downloaded:
        path.unlink(missing_ok=True)
        raise LlamarecError(
            f"Downloaded {raw.name} has SHA-256 {actual}, expected {raw.sha256}: the source changed or the "
            f"download is corrupt. Place a copy of the original file in a directory and pass --raw-dir."
        )
    _log(f"warning: {path} differs from the pinned release (SHA-256 {actual[:12]}…); figures may differ.")


def cache_folder(spec: DatasetSpec) -> Path:
    return settings.cache_dir() / "raw" / spec.name


def _extracted_from(archive: Path, raw: RawFile, cache: Path) -> Path:
    """``raw`` taken out of ``archive``. An archive from a raw directory is unpacked into a folder of the cache
    named by its content, never over the cached files: another run without --raw-dir must not pick it up."""
    if archive.parent == cache:
        return _extract_member(archive, raw.name, cache / raw.name)
    dest = cache / "from-raw-dir" / sha256_of(archive)[:16] / raw.name
    return dest if dest.is_file() else _extract_member(archive, raw.name, dest)


def resolve_raw_files(spec: DatasetSpec, raw_dir: Path | None = None) -> RawFiles:
    """Local paths of every raw file of ``spec``, downloading into the cache what is missing."""
    if raw_dir is not None and not raw_dir.is_dir():
        # otherwise a mistyped path would silently fall back to the cached (possibly other) files
        where = (
            f"is a file: give the folder that holds it, {raw_dir.parent}" if raw_dir.is_file() else "is not a folder"
        )
        raise ConfigError(f"The raw directory {raw_dir} (--raw-dir or LLAMAREC_RAW_DIR) {where}.")
    cache = cache_folder(spec)
    found: dict[str, Path] = {}
    missing: list[RawFile] = []
    for raw in spec.raw_files:
        path = None
        for directory in [d for d in (raw_dir, cache) if d is not None]:
            path = _find_in(directory, raw)
            if path is None and raw.archive and (directory / raw.archive).is_file():
                path = _extracted_from(directory / raw.archive, raw, cache)
            if path is not None:
                break
        if path is None:
            missing.append(raw)
        else:
            if raw_dir is not None and directory == cache:
                _log(f"note: {raw.name} is not in {raw_dir}; using the cached {path}.")
            _check_pinned(raw, path, downloaded=False)
            found[raw.name] = path
    if missing:
        found.update(_download_missing(spec, missing, cache, raw_dir))
    return found


def _download_missing(spec: DatasetSpec, missing: list[RawFile], cache: Path, raw_dir: Path | None):
    if settings.cache_dir().exists() and not settings.cache_dir().is_dir():  # the advice below would name a file
        raise WorkdirError(
            f"The cache folder {settings.cache_dir()} ({settings.ENV_CACHE_DIR}) is a file: point it at a folder, "
            "or give the raw files with --raw-dir DIR."
        )
    wanted = []
    for archive in sorted({r.archive for r in missing if r.archive}):
        members = " and ".join(r.name for r in missing if r.archive == archive)
        wanted.append(f"{archive} (or its {members})")
    wanted += [r.name for r in missing if not r.archive]
    sources = sorted({r.urls[0] for r in missing if r.urls})
    hint = (
        f"Raw files for '{spec.name}' are missing: {', '.join(wanted)}"
        + (f" (from {', '.join(sources)})" if sources else "")
        + f". Put them in {cache}"
        + (f" or {raw_dir}" if raw_dir else "")
        + ", or in a folder given with --raw-dir DIR or LLAMAREC_RAW_DIR."
    )
    if settings.offline() or any(not r.urls for r in missing):
        raise RawDataMissingError(hint)
    found = {}
    try:
        for archive in sorted({r.archive for r in missing if r.archive}):
            members = [r for r in missing if r.archive == archive]
            zip_path = download(members[0].urls, cache / archive)
            for raw in members:
                found[raw.name] = _extract_member(zip_path, raw.name, cache / raw.name)
                _check_pinned(raw, found[raw.name], downloaded=True)
            zip_path.unlink()
        for raw in (r for r in missing if not r.archive):
            found[raw.name] = download(raw.urls, cache / raw.name)
            _check_pinned(raw, found[raw.name], downloaded=True)
    except DownloadError as exc:
        raise RawDataMissingError(f"{hint} (download failed: {exc})") from exc
    return found


class DownloadError(Exception):
    pass


def download(urls: tuple[str, ...], dest: Path, retries: int = RETRIES) -> Path:
    """Fetch the first url that works into ``dest``; retries with back-off, resumes partial files."""
    import httpx

    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        for attempt in range(1, retries + 1):
            try:
                _fetch(httpx, url, dest)
                _verify_complete(dest)
                (dest.parent / (dest.name + ".sha256")).write_text(f"{sha256_of(dest)}  {dest.name}\n")
                return dest
            except httpx.HTTPStatusError as exc:
                errors.append(f"{url}: HTTP {exc.response.status_code}")
                if exc.response.status_code < 500:
                    break  # a 404 will not get better; try the next mirror
            except (httpx.TransportError, DownloadError) as exc:
                errors.append(f"{url}: {exc}")
            if attempt < retries:
                time.sleep(min(2**attempt, 10))
    raise DownloadError("; ".join(errors[-3:]))


def _fetch(httpx, url: str, dest: Path) -> None:
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    timeout = httpx.Timeout(30.0, connect=10.0)
    with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
        response.raise_for_status()
        if response.status_code != 206:  # the server ignored the range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else None
        with (
            open(part, "ab" if offset else "wb") as out,
            Progress(
                *Progress.get_default_columns(),
                DownloadColumn(),
                TransferSpeedColumn(),
                transient=True,
                console=_stderr_console(),
            ) as progress,
        ):
            task = progress.add_task(f"download {dest.name}", total=total, completed=offset)
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)
                progress.advance(task, len(chunk))
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"incomplete download ({part.stat().st_size} of {total} bytes)")
    part.replace(dest)


def _verify_complete(path: Path) -> None:
    """A truncated gzip or zip fails here rather than deep inside a reader."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                while f.read(CHUNK):
                    pass
        elif path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                if zf.testzip() is not None:
                    raise DownloadError("corrupt zip member")
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        path.unlink(missing_ok=True)
        raise DownloadError(f"corrupt download ({exc})") from exc


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
