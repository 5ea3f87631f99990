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
from llamarec_cli.errors import LlamarecError, RawDataMissingError

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
    with pytest.raises(RawDataMissingError) as info:
        resolve_raw_files(spec_with(raw), raw_dir=tmp_path / "mine")
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
