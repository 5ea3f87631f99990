"""llamarec serve: a real uvicorn server on a free loopback port, called over real HTTP (httpx, raw sockets).

Against the tiny Llama on 'chain': the answer equals serve-shell's JSON, concurrent requests are batched and score as
alone, each bad request gets its 4xx and one message. Against a stand-in recommender (no model): a bug is a 500
without a traceback and fails only its own request, a wait over the timeout is a 503, /health follows the loading.
The command itself: end to end in a subprocess, a missing extra, a port in use, models that fail to load.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from llamarec_cli.cli import build_app
from llamarec_cli.errors import LlamarecError
from llamarec_cli.serving.batcher import Batcher, BusyError
from llamarec_cli.serving.http import create_app
from llamarec_cli.serving.recommender import Recommendation, TitleIndex

FAST_RETRIEVER = {"hidden": 16, "val_every": 10, "max_epochs": 3}


@contextmanager
def serving(load, **options):
    """``create_app(load)`` served by uvicorn in a thread on a free loopback port; yields its base URL."""
    app = create_app(load, **options)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    sock = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def wait_ready(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while httpx.get(f"{url}/health").status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.02)


def one_error(response: httpx.Response) -> str:
    """The body of an error: exactly {"error": one line}, never a traceback."""
    assert "Traceback" not in response.text and 'File "' not in response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    return body["error"]


# --- the tiny Llama on 'chain' ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory):
    """'chain' preprocessed and an LRURec trained on it, once for the module."""
    from conftest import ChainPlugin

    from llamarec_cli import plugins
    from llamarec_cli.stages.preprocess import preprocess
    from llamarec_cli.stages.retrieve_train import train_retriever

    workdir = tmp_path_factory.mktemp("serve")
    plugins.register_plugin(ChainPlugin(), name="chain-plugin")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LLAMAREC_OFFLINE", "1")
            patch.setenv("LLAMAREC_CACHE_DIR", str(workdir / "cache"))
            preprocess("chain", workdir=workdir)
            train_retriever("chain", workdir=workdir, device="cpu", flags=FAST_RETRIEVER)
    finally:
        plugins.unregister_plugin("chain-plugin")
    return workdir


@pytest.fixture(scope="module")
def recommender(chain_dir, tiny_llama_dir):
    from llamarec_cli.serving.recommender import Recommender

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLAMAREC_OFFLINE", "1")
        return Recommender(
            "chain", workdir=chain_dir, adapter="none", model=str(tiny_llama_dir), dtype="fp32", device="cpu"
        )


@pytest.fixture(scope="module")
def url(recommender):
    """One server for the module; a 50 ms window so that requests sent together share a batch."""
    with serving(lambda: recommender, wait_ms=50, max_batch=8) as base:
        wait_ready(base)
        yield base


def without_timings(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key != "seconds"}


def assert_same_answer(got: dict, expected: dict) -> None:
    assert without_timings(got) | {"ranked": None, "candidates": None} == without_timings(expected) | {
        "ranked": None,
        "candidates": None,
    }
    for key, number in (("ranked", "probability"), ("candidates", "score")):
        assert [r["item"] for r in got[key]] == [r["item"] for r in expected[key]]
        assert [r[number] for r in got[key]] == pytest.approx([r[number] for r in expected[key]], abs=1e-5)
    assert set(got["seconds"]) == set(expected["seconds"]) == {"retrieval", "ranking"}


def serve_shell_json(chain_dir, tiny_llama_dir, *args) -> dict:
    base = ["serve-shell", "chain", "-w", str(chain_dir), "--adapter", "none", "--model", str(tiny_llama_dir)]
    result = CliRunner().invoke(build_app(), [*base, "--dtype", "fp32", "--device", "cpu", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_health_info_and_the_api_pages(url, recommender):
    assert httpx.get(f"{url}/health").json() == {"status": "ready"}
    info = httpx.get(f"{url}/info").json()
    assert info["dataset"] == "chain" and info["retriever"] == "lrurec" and info["dtype"] == "fp32"
    assert info["ranker"] == recommender.ranker_name and info["ranker"].startswith("zero-shot")
    assert info["candidates"] == 20 and info["items"] == 40 and info["users"] == 150
    assert info["batching"]["max_batch"] == 8 and info["batching"]["wait_ms"] == 50
    assert info["limits"]["max_history"] == 1000
    assert {"llamarec", "torch", "transformers", "fastapi", "uvicorn", "python"} <= set(info["versions"])
    schema = httpx.get(f"{url}/openapi.json").json()
    assert "post" in schema["paths"]["/recommend"] and "RecommendRequest" in schema["components"]["schemas"]
    errors = schema["paths"]["/recommend"]["post"]["responses"]
    assert errors["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert "swagger" in httpx.get(f"{url}/docs").text.lower()


def test_an_answer_is_serve_shells_json(url, chain_dir, tiny_llama_dir, recommender):
    response = httpx.post(f"{url}/recommend", json={"user": "u3", "top_k": 5})
    assert response.status_code == 200, response.text
    assert response.headers["X-Batch-Size"] == "1" and "ranking;dur=" in response.headers["Server-Timing"]
    assert_same_answer(response.json(), serve_shell_json(chain_dir, tiny_llama_dir, "--user", "u3", "--top", "5"))
    assert len(response.json()["ranked"]) == 5 and len(response.json()["candidates"]) == 20

    expected = serve_shell_json(chain_dir, tiny_llama_dir, "--history", "item 3; Item 4")
    by_title = httpx.post(f"{url}/recommend", json={"history": ["item 3", "Item 4"]}).json()
    assert_same_answer(by_title, expected)
    item_3 = by_title["history"][0]["item"]
    by_id = httpx.post(f"{url}/recommend", json={"history": [item_3, "Item 4"]}).json()  # an item id as answered
    assert_same_answer(by_id, expected)
    assert [h["title"] for h in by_id["history"]] == ["Item 3", "Item 4"] and by_id["user"] is None


def test_the_retriever_alone_on_request(url):
    ranked = httpx.post(f"{url}/recommend", json={"user": "u7"}).json()
    alone = httpx.post(f"{url}/recommend", json={"user": "u7", "ranker": False}).json()
    assert alone["ranked"] is None and alone["ranker"] == "none" and alone["dtype"] is None
    assert alone["candidates"] == ranked["candidates"] and alone["seconds"]["ranking"] == 0


def test_concurrent_requests_are_batched_and_score_as_alone(url, recommender):
    histories = [[1 + (n % 40)] if n % 3 == 0 else list(range(1 + n, 1 + n + 3 * (n % 5) + 2)) for n in range(12)]
    start = threading.Barrier(len(histories))

    def ask(history):
        start.wait()
        return httpx.post(f"{url}/recommend", json={"history": history, "top_k": 20}, timeout=60)

    with ThreadPoolExecutor(len(histories)) as pool:
        responses = list(pool.map(ask, histories))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert max(int(r.headers["X-Batch-Size"]) for r in responses) > 1  # they did share batches
    assert max(int(size) for size in httpx.get(f"{url}/info").json()["batching"]["batches"]) > 1
    for history, response in zip(histories, responses):
        alone = recommender.recommend(history)  # unbatched, after the server's batches
        got = response.json()
        assert [h["item"] for h in got["history"]] == history[-20:]
        assert [r["item"] for r in got["ranked"]] == [r["item"] for r in alone.ranked]
        assert [r["probability"] for r in got["ranked"]] == pytest.approx(
            [r["probability"] for r in alone.ranked], abs=1e-5
        )
        assert [c["score"] for c in got["candidates"]] == pytest.approx(
            [c["score"] for c in alone.candidates], abs=1e-5
        )


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"user": "nobody"}, 404, "No user 'nobody' in chain (150 users, e.g. u0, u1, u10)."),
        ({"history": ["qqq zzz"]}, 422, "No title like 'qqq zzz' in chain."),
        ({"history": ["Item 3", "Item"]}, 422, "Not sure which title 'Item' is. Did you mean: "),
        ({"history": [999]}, 422, "No item 999 in chain: item ids run from 1 to 40."),
        ({"history": [3] * 10_000}, 422, "history has 10,000 entries; this server takes at most 1,000"),
        ({"history": []}, 422, "history is empty: give at least one title or item id, oldest first."),
        ({"history": "Item 3"}, 422, 'history must be a list of titles and item ids, oldest first, not "Item 3".'),
        (
            {"history": ["Item 3", 2.5]},
            422,
            "history[1] must be a title (a string) or an item id (an integer), not 2.5",
        ),
        ({"user": "u3", "top_k": 0}, 422, "top_k must be a whole number from 1 to 20, not 0."),
        ({"user": "u3", "top_k": 21}, 422, "top_k must be a whole number from 1 to 20, not 21."),
        ({"user": "u3", "top_k": "5"}, 422, 'top_k must be a whole number from 1 to 20, not "5".'),
        ({"user": "u3", "ranker": "yes"}, 422, 'ranker must be true or false, not "yes".'),
        ({"user": "u3", "history": ["Item 3"]}, 422, 'Give either "user" or "history", not both or neither.'),
        ({}, 422, 'Give either "user" or "history", not both or neither.'),
        ({"user": "u3", "colour": "red"}, 422, 'Unknown field "colour": the body must be a JSON object: {"user"'),
        ([1, 2], 422, 'The body must be a JSON object: {"user": "<id>"} or {"history": ['),
        (b'{"user": "u3",', 400, "The body is not valid JSON (Expecting property name enclosed in double quotes"),
        (b"", 422, "The body must be a JSON object"),
    ],
)
def test_a_bad_request_gets_its_4xx_and_one_message(url, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{url}/recommend", content=content, headers=JSON)
    assert response.status_code == status, response.text
    assert one_error(response).startswith(message)


def test_a_body_not_sent_as_json_is_a_415(url):
    form = {"content-type": "application/x-www-form-urlencoded"}  # what curl -d sends unless told
    response = httpx.post(f"{url}/recommend", content=b'{"user": "u3"}', headers=form)
    assert response.status_code == 415
    assert one_error(response) == (
        "Send the body as JSON, with Content-Type: application/json (not application/x-www-form-urlencoded)."
    )


def test_a_body_over_the_limit_is_refused_unread(url):
    big = json.dumps({"history": ["x" * 1000] * 1100}).encode()
    response = httpx.post(f"{url}/recommend", content=big, headers=JSON)
    assert response.status_code == 413
    assert one_error(response) == "The request body is over 1,048,576 bytes, the most this server accepts."

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"history": ['
        for _ in range(300):
            yield b'"' + b"y" * 4096 + b'",'
        yield b'"z"]}'

    response = httpx.post(f"{url}/recommend", content=chunks(), headers=JSON)
    assert response.status_code == 413 and "over 1,048,576 bytes" in one_error(response)


@pytest.mark.parametrize("method, path, status", [("GET", "/recommend", 405), ("GET", "/nowhere", 404)])
def test_unknown_endpoints_list_the_known_ones(url, method, path, status):
    response = httpx.request(method, f"{url}{path}")
    assert response.status_code == status
    endpoints = "POST /recommend, GET /health, GET /info and GET /docs"
    assert one_error(response) == f"No {method} {path}: the endpoints are {endpoints}."


# --- a stand-in recommender: failures and timing on demand ----------------------------------------------------------


class StandIn:
    """What the app reads of a Recommender, with a recommend_many that can be slowed or broken."""

    def __init__(self, delay: float = 0.0, breaks_on: int | None = None):
        self.titles = {i: f"Item {i}" for i in range(1, 41)}
        self.index = TitleIndex(self.titles)
        self.dataset = SimpleNamespace(name="stand-in", users=SimpleNamespace(height=2), path=Path("/nowhere"))
        self.k, self.llm, self.ranker_name, self.dtype, self.alpha = 20, object(), "stand-in", "fp32", None
        self.retriever_name, self.device = "lrurec", "cpu"
        self.delay, self.breaks_on = delay, breaks_on
        self.calls: list[int] = []
        self.scored: list[list[int]] = []

    def user_history(self, user):
        return [1, 2, 3]

    def recommend_many(self, histories, batch_size=8, *, rank=True):
        self.calls.append(len(histories))
        self.scored += histories
        time.sleep(self.delay)
        if any(self.breaks_on in h for h in histories):
            raise RuntimeError("secret internals at 0xdeadbeef")
        return [
            Recommendation(
                history=[(i, self.titles[i]) for i in h],
                candidates=[{"item": 40, "title": "Item 40", "score": 1.0}],
                ranked=[{"item": 40, "title": "Item 40", "probability": 1.0, "letter": "A"}] if rank else None,
                seconds={"retrieval": 0.0, "ranking": 0.0},
            )
            for h in histories
        ]


def test_a_server_without_a_ranker_answers_with_the_retriever_alone():
    stand_in = StandIn()
    stand_in.llm, stand_in.ranker_name = None, "none"
    with serving(lambda: stand_in) as base:
        wait_ready(base)
        answer = httpx.post(f"{base}/recommend", json={"history": ["Item 3"]}).json()
        assert answer["ranked"] is None and answer["ranker"] == "none" and answer["candidates"]
        response = httpx.post(f"{base}/recommend", json={"history": ["Item 3"], "ranker": True})
        assert response.status_code == 422
        assert one_error(response) == 'This server has no ranker (started with --ranker none): leave "ranker" out.'


def test_a_bug_is_a_500_without_a_traceback_and_fails_only_its_request(capfd):
    stand_in = StandIn(breaks_on=13)
    with serving(lambda: stand_in, wait_ms=100) as base:
        wait_ready(base)
        histories = [[1], [13], [2], [3]]
        start = threading.Barrier(len(histories))

        def ask(history):
            start.wait()
            return httpx.post(f"{base}/recommend", json={"history": history})

        with ThreadPoolExecutor(len(histories)) as pool:
            responses = list(pool.map(ask, histories))
        assert [r.status_code for r in responses] == [200, 500, 200, 200]
        assert one_error(responses[1]) == "Internal error; the server's log has the details."
        assert "deadbeef" not in responses[1].text
        assert max(stand_in.calls) > 1  # the broken request was in a batch with others, which then ran alone
        assert httpx.post(f"{base}/recommend", json={"history": [5]}).status_code == 200  # still serving
    assert "secret internals" in capfd.readouterr().err  # the traceback is in the server's log


def test_a_wait_over_the_timeout_is_a_503_not_a_hung_connection():
    with serving(lambda: StandIn(delay=1.5), timeout_s=0.3) as base:
        wait_ready(base)
        began = time.monotonic()
        response = httpx.post(f"{base}/recommend", json={"user": "a"}, timeout=10)
        assert response.status_code == 503 and time.monotonic() - began < 1.2
        assert response.headers["Retry-After"] == "1"
        assert one_error(response).startswith("No answer within 0.3 s: the server is busy.")


def test_a_request_whose_client_disconnected_is_not_scored():
    stand_in = StandIn(delay=1.0)
    with serving(lambda: stand_in, max_batch=1) as base:
        wait_ready(base)
        port = int(base.rsplit(":", 1)[1])
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, f"{base}/recommend", json={"history": [1]}, timeout=30)
            while not stand_in.calls:  # the first request is in the model for a second
                time.sleep(0.01)
            for item in (2, 3, 4):  # queued behind it, then their clients hang up
                body = json.dumps({"history": [item]}).encode()
                with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                    conn.sendall(
                        b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    time.sleep(0.05)
            assert first.result().status_code == 200
        assert httpx.post(f"{base}/recommend", json={"history": [5]}).status_code == 200
    assert stand_in.scored == [[1], [5]]


def test_a_stalled_body_is_a_408():
    with serving(lambda: StandIn(), timeout_s=0.3) as base:
        wait_ready(base)
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            conn.sendall(b'Content-Length: 100\r\n\r\n{"user":')  # and then nothing
            reply = b""
            while chunk := conn.recv(4096):  # to the end: the server closes the connection
                reply += chunk
        reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and "did not arrive within 0.3 s" in reply


def test_health_is_ready_only_once_the_models_are_loaded():
    loaded = threading.Event()

    def load():
        loaded.wait(30)
        return StandIn()

    with serving(load) as base:
        assert httpx.get(f"{base}/health").status_code == 503
        assert httpx.get(f"{base}/health").json() == {"status": "loading"}
        response = httpx.post(f"{base}/recommend", json={"user": "a"})
        assert response.status_code == 503 and "still loading" in one_error(response)
        assert httpx.get(f"{base}/info").status_code == 503
        loaded.set()
        wait_ready(base, 10)
        assert httpx.post(f"{base}/recommend", json={"user": "a"}).status_code == 200


@pytest.mark.parametrize(
    "failure, message",
    [
        (LlamarecError("No ranker 'best' for chain."), "No ranker 'best' for chain."),
        (RuntimeError("secret at 0xdeadbeef"), "An internal error (RuntimeError); the server's log has the details."),
    ],
)
def test_health_says_why_the_models_failed_to_load(failure, message):
    def load():
        raise failure

    with serving(load) as base:
        deadline = time.monotonic() + 10
        while (body := httpx.get(f"{base}/health").json())["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert body == {"status": "failed", "error": message}
        response = httpx.post(f"{base}/recommend", json={"user": "a"})
        assert response.status_code == 503 and one_error(response) == f"The models could not be loaded: {message}"


def test_the_batcher_gathers_up_to_max_batch_and_leaves_out_requests_timed_out_in_the_queue():
    seen: list[list] = []

    def run(values):
        seen.append(values)
        time.sleep(0.3 if "slow" in values else 0)
        return [f"answer {v}" for v in values]

    async def scenario():
        batcher = Batcher(run, max_batch=2, wait_s=0.01, timeout_s=0.2)
        await batcher.start()
        jobs = await asyncio.gather(*(batcher.submit(n) for n in range(5)))
        assert [job.future.result() for job in jobs] == [f"answer {n}" for n in range(5)]
        assert seen == [[0, 1], [2, 3], [4]] and [job.batch for job in jobs] == [2, 2, 2, 2, 1]
        seen.clear()
        slow = asyncio.create_task(batcher.submit("slow"))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.submit("queued"))  # waits behind "slow", past its timeout
        for task in (slow, queued):
            with pytest.raises(BusyError):
                await task
        await asyncio.sleep(0.2)
        assert seen == [["slow"]]  # "queued" was dropped, never run
        assert batcher.sizes == {2: 2, 1: 2}
        await batcher.stop()

    asyncio.run(scenario())


# --- the command -----------------------------------------------------------------------------------------------------


def test_the_command_serves_until_ctrl_c(chain_dir, tiny_llama_dir):
    env = os.environ | {"OMP_NUM_THREADS": "1", "LLAMAREC_OFFLINE": "1", "COLUMNS": "200"}
    command = [sys.executable, "-m", "llamarec_cli", "serve", "chain", "-w", str(chain_dir), "--port", "0"]
    command += ["--adapter", "none", "--model", str(tiny_llama_dir), "--device", "cpu", "--dtype", "fp32"]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in server.stderr:
            lines.append(line)
            if found := re.search(r"Serving chain on (http://127\.0\.0\.1:\d+)", line):
                break
        assert found, "".join(lines)
        base = found.group(1)
        wait_ready(base, 30)
        answer = httpx.post(f"{base}/recommend", json={"user": "u3", "top_k": 3}).json()
        assert answer["user"] == "u3" and len(answer["ranked"]) == 3
        server.send_signal(signal.SIGINT)
        rest = server.communicate(timeout=60)[1]
    finally:
        server.kill() if server.poll() is None else None
    assert server.returncode == 0, "".join(lines) + rest
    assert "Stopped." in rest and "Traceback" not in "".join(lines) + rest


def test_without_the_extra_one_line_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed: importing it raises ImportError
    result = CliRunner().invoke(build_app(), ["serve", "chain", "-w", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: llamarec serve needs FastAPI and uvicorn (uvicorn is not installed): pip install 'llamarec[serve]'"
    ]
    assert not (tmp_path / "runs").exists()


def test_a_port_in_use_is_one_line_before_anything_loads(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner().invoke(build_app(), ["serve", "chain", "-w", str(tmp_path / "runs"), "--port", str(port)])
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: Cannot listen on 127.0.0.1:{port}: ") and "--port" in result.output
    assert not (tmp_path / "runs").exists()


def test_models_that_fail_to_load_stop_the_command_with_their_error(tmp_path):
    result = CliRunner().invoke(build_app(), ["serve", "chain", "-w", str(tmp_path / "runs"), "--port", "0"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "chain" in errors[0], result.output


# --- the load benchmark ----------------------------------------------------------------------------------------------


def test_the_load_benchmark_runs_quick(chain_dir, tiny_llama_dir, tmp_path):
    """benchmarks/serving.py --quick against the tiny Llama: a real server process, real load, both result files."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    try:
        import serving as benchmark
    finally:
        sys.path.pop(0)
    results = tmp_path / "results"
    args = ["--workdir", str(chain_dir), "--dataset", "chain", "--model", str(tiny_llama_dir), "--dtype", "fp32"]
    code = benchmark.main([*args, "--device", "cpu", "--quick", "--results", str(results)])
    data = json.loads((results / "serving.json").read_text())
    assert code == 0 and data["errors"] == 0 and not data["memory"]["grows"]
    assert [level["level"] for level in data["levels"]] == ["1", "4", "4 again"]
    for level in data["levels"]:
        assert level["requests"] == 8 and 0 < level["p50_s"] <= level["p95_s"] <= level["p99_s"]
        assert level["requests_per_second"] > 0 and level["mean_batch"] >= 1
    assert data["served"]["dataset"] == "chain" and data["served"]["dtype"] == "fp32"
    assert data["server"]["exit_code"] == 0 and data["server"]["peak_rss_mib"] > 0
    assert data["command"].startswith(".venv/bin/python benchmarks/serving.py --workdir")
    text = (results / "serving.md").read_text()
    assert "| 4 again | 8 | 0 |" in text and "- Errors: **0** (must be 0)." in text
