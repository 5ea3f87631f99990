"""Benchmark: peak memory (RSS) of `llamarec pipeline` stage by stage, its wall time, and of the ranker commands.

Every command runs in a fresh process, as a user runs it; the kernel reports its exact peak resident memory when
it ends (``wait4``'s ``ru_maxrss``). Within the pipeline, the peak of each stage is sampled every 50 ms (a spike
shorter than that can be missed; the whole run's peak is exact). In order:

1. ``llamarec pipeline`` in a fresh work directory (the README's main job, raw files from ``../shared``);
2. ``llamarec rank-train ml-100k --model smollm2-135m --batch-size 16`` on 32 examples in that directory;
3. ``llamarec evaluate ml-100k`` and ``llamarec serve-shell ml-100k --user 1 --json`` on the pipeline's ranker.

Writes ``benchmarks/results/memory.{json,md}``. The SmolLM2 conversion is cached beforehand, so the pipeline's
time is the stages' own. Leaves the work directory for ``benchmarks/efficiency.py``.

    .venv/bin/python benchmarks/memory.py
    .venv/bin/python benchmarks/memory.py --workdir /tmp/llamarec-bench-memory --skip-pipeline
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LLAMAREC_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"
LLAMAREC = [sys.executable, "-m", "llamarec_cli"]
GIB = 1024**3


def run(command: list[str], env: dict, stages: tuple[str, ...] = ()) -> dict:
    """Run ``command``; its exit code, wall time, exact peak RSS and, where its output names ``stages`` as lines
    starting with them, the sampled peak RSS of each."""
    began = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    current = {"stage": "start"}
    peaks: dict[str, int] = {}

    def sample():
        watched = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                rss = watched.memory_info().rss
            except psutil.Error:
                return
            peaks[current["stage"]] = max(peaks.get(current["stage"], 0), rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tail = []
    for line in process.stdout:
        sys.stdout.write(line)
        tail = (tail + [line])[-40:]
        for stage in stages:
            if line.strip().startswith(stage):
                current["stage"] = stage
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    result = {
        "command": shlex.join(["llamarec", *command[len(LLAMAREC) :]]),
        "exit_code": process.returncode,
        "seconds": round(time.perf_counter() - began, 1),
        "peak_rss_gib": usage.ru_maxrss * 1024 / GIB,  # Linux reports KiB
    }
    if stages:
        result["stages"] = {stage: peaks[stage] / GIB for stage in stages if stage in peaks}
    if process.returncode != 0:
        raise SystemExit(f"{result['command']} failed ({process.returncode}):\n{''.join(tail)}")
    print(f"{result['command']}: {result['seconds']} s, peak {result['peak_rss_gib']:.2f} GiB", flush=True)
    return result


def ranking_of(report: Path) -> dict:
    """What the pipeline's closing table says (its evaluate report): each order's subset NDCG@10 and its paired
    difference to the retriever's order, the α used and the users."""
    data = json.loads(report.read_text())
    return {
        "users": data["subset_users"],
        "alpha": data["fusion"]["alpha"] if data.get("fusion") else None,
        "ndcg10": {order: metrics["NDCG@10"] for order, metrics in data["subset"].items()},
        "paired": {
            order: {k: d[k] for k in ("difference", "half_width", "better", "worse")}
            for order, d in data["paired_by_order"].items()
        },
    }


PIPELINE_STAGES = ("1/5", "2/5", "3/5", "4/5", "5/5")
STAGE_NAMES = dict(zip(PIPELINE_STAGES, ("preprocess", "retrieve-train", "candidates", "rank-train", "evaluate")))


def markdown(data: dict) -> str:
    lines = [
        "# Peak memory",
        "",
        f"`{data['command']}` ({data['date']}, {data['machine']}). Peak resident memory of fresh processes, from "
        "the kernel (exact); within the pipeline, each stage's peak is sampled every 50 ms.",
        "",
    ]
    p = data.get("pipeline")
    if p:
        lines += [
            f"`{p['command']}`: **{p['seconds'] / 60:.1f} minutes** ({p['seconds']:.0f} s), peak "
            f"**{p['peak_rss_gib']:.2f} GiB** (target: under 3 GiB).",
            "",
            "| stage | peak RSS (sampled) |",
            "|---|---|",
        ]
        for stage, gib in p["stages"].items():
            lines.append(f"| {stage} {STAGE_NAMES[stage]} | {gib:.2f} GiB |")
        lines.append("")
        if "ranking" in p:
            r = p["ranking"]
            lines += [
                f"The pipeline's closing table ({r['users']} test users of the retrieval subset, α = {r['alpha']}):",
                "",
                "| order | subset NDCG@10 | minus the retriever's order (95%, paired) | users up / down |",
                "|---|---|---|---|",
            ]
            for order, ndcg in r["ndcg10"].items():
                d = r["paired"].get(order)
                paired = (
                    f"{d['difference']:+.4f} ± {d['half_width']:.4f} | {d['better']} / {d['worse']}" if d else " | "
                )
                lines.append(f"| {order} | {ndcg:.4f} | {paired} |")
            lines.append("")
    lines += ["| command | seconds | peak RSS |", "|---|---|---|"]
    for r in data["commands"]:
        lines.append(f"| `{r['command']}` | {r['seconds']:.0f} | {r['peak_rss_gib']:.2f} GiB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamarec-bench-memory"))
    parser.add_argument("--skip-pipeline", action="store_true", help="reuse the pipeline run already in --workdir")
    args = parser.parse_args()

    env = os.environ | {"LLAMAREC_RAW_DIR": str(SHARED / "datasets" / "ml-latest-small"), "LLAMAREC_OFFLINE": "1"}
    workdir = args.workdir / "pipeline"
    path = RESULTS / "memory.json"
    data = json.loads(path.read_text()) if args.skip_pipeline and path.is_file() else {}
    data |= {
        "command": "python benchmarks/memory.py " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "commands": [],
    }
    subprocess.run([sys.executable, "-c", "from llamarec_cli.ranking.models import resolve_model as r; "
                    "r('smollm2-135m')"], env=env, check=True)  # fmt: skip
    if not args.skip_pipeline:
        shutil.rmtree(workdir, ignore_errors=True)
        data["pipeline"] = run([*LLAMAREC, "pipeline", "-w", str(workdir)], env, PIPELINE_STAGES)
        data["pipeline"]["ranking"] = ranking_of(workdir / "ml-100k" / "reports" / "evaluate-default.json")
    ranker = ["--model", "smollm2-135m", "--max-train-examples", "32", "--max-val-examples", "8", "--name", "b16"]
    for command in (
        ["rank-train", "ml-100k", *ranker, "--batch-size", "16", "--negatives", "retrieved", "--restart"],
        ["evaluate", "ml-100k"],
        ["serve-shell", "ml-100k", "--user", "1", "--json"],
    ):
        data["commands"].append(run([*LLAMAREC, *command, "-w", str(workdir)], env))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "memory.md").write_text(markdown(data))
    print((RESULTS / "memory.md").read_text())


if __name__ == "__main__":
    main()
