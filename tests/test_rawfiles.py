"""Raw files: raw directory, cache, and the real download code against a server on loopback."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llamarec_cli import RawFile
from llamarec_cli.data import rawfiles
from llamarec_cli.data.rawfiles import resolve_raw_files
from llamarec_cli.data.spec import DatasetSpec
from llamarec_cli.errors import ConfigError, LlamarecError, RawDataMissingError

RATINGS = b"userId,movieId,rating,timestamp\n" + b"".join(
    b"%d,%d,4.0,%d\n" % (u, i, u + i) for u in range(50) for i in range(40)
)


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buffer.getvalue()


class Server:
    """Serves ``files`` on 127.0.0.1; ``fail`` maps a path to how many requests get HTTP 500 first."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.fail: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if server.fail.get(self.path, 0) > 0:
                    server.fail[self.path] -= 1
                    self.send_error(500)
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("LLAMAREC_OFFLINE")
    monkeypatch.setattr(rawfiles.time, "sleep", lambda seconds: None)
    srv = Server()
    yield srv
    srv.httpd.shutdown()


def spec_with(*raw_files: RawFile) -> DatasetSpec:
    return DatasetSpec(
        name="local",
        description="",
        raw_files=raw_files,
        read_interactions=lambda f: None,
        read_titles=lambda f, n: None,
    )


def test_archive_is_downloaded_verified_extracted_and_cached(server):
    server.files["/ml.zip"] = zipped({"ml/ratings.csv": RATINGS})
    raw = RawFile(
        "ratings.csv",
        urls=(server.url + "/missing.zip", server.url + "/ml.zip"),
        archive="ml.zip",
        sha256=hashlib.sha256(RATINGS).hexdigest(),
    )
    files = resolve_raw_files(spec_with(raw))
    assert files["ratings.csv"].read_bytes() == RATINGS
    assert [path for path, _ in server.requests] == ["/missing.zip", "/ml.zip"]  # a 404 is not retried
    assert not any(p.suffix in (".part", ".zip") for p in files["ratings.csv"].parent.iterdir())
    resolve_raw_files(spec_with(raw))
    assert len(server.requests) == 2  # the second time comes from the cache


def test_server_errors_are_retried(server):
    server.files["/r.csv"] = RATINGS
    server.fail["/r.csv"] = 2
    files = resolve_raw_files(spec_with(RawFile("r.csv", urls=(server.url + "/r.csv",))))
    assert files["r.csv"].read_bytes() == RATINGS
    assert len(server.requests) == 3
    recorded = (files["r.csv"].parent / "r.csv.sha256").read_text()
    assert recorded.startswith(hashlib.sha256(RATINGS).hexdigest())


def test_checksum_mismatch_is_refused_and_nothing_is_cached(server):
    server.files["/r.csv"] = RATINGS
    raw = RawFile("r.csv", urls=(server.url + "/r.csv",), sha256="0" * 64)
    with pytest.raises(LlamarecError, match="Downloaded r.csv has SHA-256 .* expected 0000"):
        resolve_raw_files(spec_with(raw))
    assert not (rawfiles.cache_folder(spec_with(raw)) / "r.csv").exists()


def test_interrupted_download_resumes_with_a_range_request(server):
    server.files["/r.csv"] = RATINGS
    raw = RawFile("r.csv", urls=(server.url + "/r.csv",))
    cache = rawfiles.cache_folder(spec_with(raw))
    cache.mkdir(parents=True)
    (cache / "r.csv.part").write_bytes(RATINGS[:1000])
    files = resolve_raw_files(spec_with(raw))
    assert files["r.csv"].read_bytes() == RATINGS
    assert server.requests == [("/r.csv", "bytes=1000-")]


def test_unreachable_source_explains_what_to_place_where(server, tmp_path):
    raw = RawFile("r.csv", urls=(server.url + "/gone.csv",))
    (tmp_path / "mine").mkdir()
    with pytest.raises(RawDataMissingError) as info:
        resolve_raw_files(spec_with(raw), raw_dir=tmp_path / "mine")
    (tmp_path / "archive.zip").write_bytes(b"PK")  # the archive itself given: its folder is what is meant
    with pytest.raises(ConfigError, match=f"archive.zip .*is a file: give the folder that holds it, {tmp_path}"):
        resolve_raw_files(spec_with(raw), raw_dir=tmp_path / "archive.zip")
    message = str(info.value)
    assert "Raw files for 'local' are missing: r.csv" in message
    assert str(tmp_path / "mine") in message and "HTTP 404" in message


def test_offline_never_touches_the_network(server, monkeypatch):
    monkeypatch.setenv("LLAMAREC_OFFLINE", "1")
    with pytest.raises(RawDataMissingError):
        resolve_raw_files(spec_with(RawFile("r.csv", urls=(server.url + "/r.csv",))))
    assert server.requests == []


def test_truncated_gzip_download_is_rejected(server):
    import gzip

    server.files["/m.json.gz"] = gzip.compress(b"{'asin': 'x'}\n" * 1000)[:-20]
    with pytest.raises(RawDataMissingError, match="corrupt download"):
        resolve_raw_files(spec_with(RawFile("m.json.gz", urls=(server.url + "/m.json.gz",))))


def test_a_raw_dir_that_does_not_exist_is_refused(tmp_path):
    raw = RawFile("r.csv", urls=("http://127.0.0.1:9/r.csv",))
    (tmp_path / "cache").mkdir()
    with pytest.raises(ConfigError, match="mine .*is not a folder"):  # not the cached files without a word
        resolve_raw_files(spec_with(raw), raw_dir=tmp_path / "mine")


def test_an_archive_in_the_raw_dir_never_replaces_the_cached_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAMAREC_CACHE_DIR", str(tmp_path / "cache"))
    raw = RawFile("r.csv", archive="pack.zip", urls=("http://127.0.0.1:9/pack.zip",))
    cached = tmp_path / "cache" / "raw" / "local" / "r.csv"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(RATINGS)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "pack.zip").write_bytes(zipped({"pack/r.csv": b"userId,movieId,rating,timestamp\n1,2,3.0,4\n"}))

    from_archive = resolve_raw_files(spec_with(raw), raw_dir=mine)["r.csv"]
    assert from_archive.read_bytes().startswith(b"userId") and from_archive != cached
    assert cached.read_bytes() == RATINGS  # a later run without --raw-dir still gets the cached file
    assert resolve_raw_files(spec_with(raw))["r.csv"] == cached

    empty = tmp_path / "other"
    empty.mkdir()
    assert resolve_raw_files(spec_with(raw), raw_dir=empty)["r.csv"] == cached
    assert f"r.csv is not in {empty}; using the cached" in capsys.readouterr().err
