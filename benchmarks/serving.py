"""Benchmark: ``llamarec serve`` under load on loopback: throughput, latency, errors and the server's memory at
concurrency 1, 4 and 16.

``llamarec serve`` runs in a process of its own (so its memory is its own) on a free loopback port, with the small
model by default (smollm2-135m zero-shot on ml-100k). Once GET /health answers 200 and a warm-up has run, each level
sends the same fixed number of POST /recommend requests (the dataset's users in order, each its whole history) from
that many keep-alive connections at once, each sending its next request as soon as it has its answer. Recorded per
level: requests per second, p50 / p95 / p99 latency (nearest rank), the errors (any answer but 200, or none; there
must be none), the mean batch the server ran (from GET /info) and the server's peak RSS, sampled every 50 ms. The
last level then runs again: memory that grows over that second run, beyond 3% or 32 MiB, is reported as growth (a
leak grows on every run; the working memory of a larger batch is taken once). The server's exact peak RSS comes
from the kernel when it exits. The aim: at concurrency 16, at least twice the throughput of concurrency 1, from
batching.

Writes ``benchmarks/results/serving.json`` and ``serving.md`` and prints the command that reproduces them. Needs a
work directory with the dataset preprocessed and its retriever trained (``llamarec pipeline -w DIR``, or
``benchmarks/memory.py``, leaves one).

    .venv/bin/python benchmarks/serving.py --workdir /tmp/llamarec-bench-memory/pipeline
    .venv/bin/python benchmarks/serving.py --ranker default          # the trained ranker instead of zero-shot
    .venv/bin/python benchmarks/serving.py --quick                   # a smoke run: 8 requests at concurrency 1, 4
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MIB = 1024**2
GROWTH_MIB, GROWTH_SHARE = 32, 0.03  # what the second run of the last level may add to the RSS and not count


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamarec-bench-memory/pipeline"))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--ranker", default="zero-shot", help="zero-shot (--model, no adapter) or a trained ranker")
    parser.add_argument("--model", default="smollm2-135m", help="the base model of a zero-shot ranker")
    parser.add_argument("--dtype", default=None, help="the ranker's dtype (default: the ranker's own)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--requests", type=int, default=96, help="requests at each concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--wait-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds the client waits for one answer")
    parser.add_argument("--quick", action="store_true", help="8 requests at concurrency 1 and 4: a smoke run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.concurrency = 8, [1, 4]
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(args: argparse.Namespace, port: int) -> list[str]:
    command = [sys.executable, "-m", "llamarec_cli", "serve", args.dataset, "-w", str(args.workdir)]
    command += ["--port", str(port), "--device", args.device, "--max-batch", str(args.max_batch)]
    command += ["--wait-ms", f"{args.wait_ms:g}", "--timeout", f"{args.timeout:g}"]
    if args.ranker == "zero-shot":
        command += ["--adapter", "none", "--model", args.model]
    else:
        command += ["--ranker", args.ranker]
    return command + (["--dtype", args.dtype] if args.dtype else [])


class Memory:
    """The server's RSS every 50 ms, the peak of each level kept under its name."""

    def __init__(self, pid: int):
        self.process, self.level, self.peaks, self.last = psutil.Process(pid), "load", {}, 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while not self.stopped.is_set():
            try:
                self.last = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peaks[self.level] = max(self.peaks.get(self.level, 0), self.last)
            self.stopped.wait(0.05)

    def now(self) -> int:
        self.last = self.process.memory_info().rss
        return self.last

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def load_level(url: str, bodies: list[dict], concurrency: int, timeout: float) -> dict:
    """Send ``bodies`` from ``concurrency`` connections, each the next body once it has its answer."""
    latencies, model, errors = [], [], []  # model: the request's share of its batch's model time, server side
    pending = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def connection():
            for body in pending:  # shared: each body is sent once
                began = time.perf_counter()
                try:
                    response = await client.post("/recommend", json=body)
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                    else:
                        model.append(sum(response.json()["seconds"].values()))
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    return {
        "concurrency": concurrency,
        "requests": len(bodies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "seconds": seconds,
        "requests_per_second": len(bodies) / seconds,
        "p50_s": percentile(latencies, 0.50),
        "p95_s": percentile(latencies, 0.95),
        "p99_s": percentile(latencies, 0.99),
        "model_p50_s": percentile(model, 0.50) if model else None,
        "model_p95_s": percentile(model, 0.95) if model else None,
    }


def batches(url: str) -> dict[int, int]:
    return {int(size): n for size, n in httpx.get(f"{url}/info").json()["batching"]["batches"].items()}


def mean_batch(before: dict[int, int], after: dict[int, int]) -> float:
    ran = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    count = sum(ran.values())
    return sum(size * n for size, n in ran.items()) / count if count else 0.0


def wait_ready(url: str, server: subprocess.Popen, log: Path, seconds: float = 900) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"llamarec serve exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"llamarec serve was not ready within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def measure(args: argparse.Namespace, url: str, memory: Memory) -> dict:
    from llamarec_cli.data.artifact import load_dataset

    users = load_dataset(args.workdir, args.dataset).users["original_id"].to_list()
    bodies = [{"user": users[n % len(users)]} for n in range(args.requests)]
    memory.level = "warm-up"  # one request alone, then a batch as wide as the widest level: each shape once
    for concurrency in (1, max(args.concurrency)):
        warm = asyncio.run(load_level(url, bodies[:concurrency], concurrency, args.timeout))
        if warm["errors"]:
            raise SystemExit(f"the warm-up failed: {warm['error_examples']}")
    info = httpx.get(f"{url}/info").json()
    levels = []
    for n, concurrency in enumerate([*args.concurrency, args.concurrency[-1]]):
        memory.level = name = f"{concurrency}" if n < len(args.concurrency) else f"{concurrency} again"
        before = batches(url)
        level = asyncio.run(load_level(url, bodies, concurrency, args.timeout))
        level |= {"level": name, "mean_batch": mean_batch(before, batches(url)), "rss_after_mib": memory.now() / MIB}
        level["peak_rss_mib"] = max(memory.peaks.get(name, 0), memory.last) / MIB
        levels.append(level)
        print(
            f"concurrency {name}: {level['requests_per_second']:.2f} requests/s, p50 {level['p50_s']:.3f} s, "
            f"p95 {level['p95_s']:.3f} s, p99 {level['p99_s']:.3f} s, mean batch {level['mean_batch']:.1f}, "
            f"{level['errors']} errors, RSS {level['rss_after_mib']:,.0f} MiB",
            flush=True,
        )
    first, again = levels[-2]["rss_after_mib"], levels[-1]["rss_after_mib"]
    allowed = max(GROWTH_MIB, GROWTH_SHARE * first)
    speedup = levels[len(args.concurrency) - 1]["requests_per_second"] / levels[0]["requests_per_second"]
    return {
        "served": {key: info[key] for key in ("dataset", "retriever", "ranker", "dtype", "device", "batching")},
        "versions": info["versions"],
        "levels": levels,
        "errors": sum(level["errors"] for level in levels),
        "speedup": {
            "concurrency": [args.concurrency[0], args.concurrency[-1]],
            "times": speedup,
            "aim": 2.0,
            "met": speedup >= 2.0,
        },
        "memory": {"growth_mib": again - first, "allowed_mib": allowed, "grows": again - first > allowed},
    }


def run(args: argparse.Namespace) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serve_command(args, port)
    with tempfile.NamedTemporaryFile("w+", prefix="llamarec-serve-", suffix=".log", delete=False) as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    memory = Memory(server.pid)
    try:
        began = time.perf_counter()
        wait_ready(url, server, Path(log.name))
        load_seconds = time.perf_counter() - began
        result = measure(args, url, memory)
    except BaseException:
        print(f"the server's log: {log.name}", file=sys.stderr)
        raise
    finally:
        memory.stop()
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
        try:
            _, status, usage = os.wait4(server.pid, 0)
            server.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # already reaped
            usage = None
    result["server"] = {
        "command": shlex.join(["llamarec", *command[3:]]),
        "load_seconds": load_seconds,
        "exit_code": server.returncode,
        "peak_rss_mib": usage.ru_maxrss / 1024 if usage else None,  # Linux reports KiB
    }
    Path(log.name).unlink()  # kept only when the run fails, for its tail
    return result


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def markdown(data: dict) -> str:
    served, s, m = data["served"], data["speedup"], data["memory"]
    batching = served["batching"]
    lines = [
        "# Serving under load",
        "",
        f"`{data['command']}` ({data['date']}, {data['machine']}).",
        "",
        f"`{data['server']['command']}`: {served['ranker']} ({served['dtype']}) on {served['device']}, retriever "
        f"{served['retriever']}; batches of up to {batching['max_batch']}, a {batching['wait_ms']:g} ms window. "
        f"Loaded in {data['server']['load_seconds']:.0f} s. Each level sends the same {data['levels'][0]['requests']} "
        "requests (users in order, each their whole history) from that many keep-alive connections on loopback; "
        "latency is per request, client side; \"model\" is the request's share of its batch's retrieval and ranking "
        "time, server side (the rest is queueing and HTTP).",
        "",
        "| concurrency | requests | errors | requests/s | p50 | p95 | p99 | model p50 | model p95 | mean batch "
        "| peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["levels"]:
        lines.append(
            f"| {r['level']} | {r['requests']} | {r['errors']} | {r['requests_per_second']:.2f} | "
            f"{r['p50_s'] * 1000:.0f} ms | {r['p95_s'] * 1000:.0f} ms | {r['p99_s'] * 1000:.0f} ms | "
            f"{ms(r['model_p50_s'])} | {ms(r['model_p95_s'])} | "
            f"{r['mean_batch']:.1f} | {r['peak_rss_mib']:,.0f} MiB |"
        )
    low, high = s["concurrency"]
    peak = data["server"]["peak_rss_mib"]
    lines += [
        "",
        f"- Errors: **{data['errors']}** (must be 0).",
        f"- Throughput at concurrency {high}: **{s['times']:.2f}×** that at concurrency {low} "
        f"(aim: at least {s['aim']:g}×: {'met' if s['met'] else 'not met'}).",
        f"- Memory: the last level run again changed the server's RSS by {m['growth_mib']:+,.0f} MiB "
        f"(allowed: {m['allowed_mib']:,.0f} MiB): {'it grows' if m['grows'] else 'no growth'}. "
        + (f"Exact peak RSS of the server: {peak:,.0f} MiB." if peak else ""),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raw = sys.argv[1:] if argv is None else argv
    data = {
        "command": shlex.join([".venv/bin/python", "benchmarks/serving.py", *raw]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    } | run(args)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "serving.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.results / "serving.md").write_text(markdown(data))
    print(f"wrote {args.results / 'serving.json'} and {args.results / 'serving.md'}")
    print(f"reproduce: {data['command']}")
    return 1 if data["errors"] or data["memory"]["grows"] else 0


if __name__ == "__main__":
    sys.exit(main())
