"""Benchmark: the retriever at a million items and a million users (``benchmarks/retrieval.py --scale``).

A synthetic dataset is generated with numpy and polars and written as a llamarec dataset artifact: ``--items``
items with Zipf-distributed popularity (exponent 1.05, ids shuffled), ``--users`` users with power-law history
lengths (3 to 200, Zipf 2.0: most users have a few items, a few have hundreds), the last item of each user held out
for test and the one before for validation, as METHOD.md splits the real ones.

Then, each in its own subprocess so that its peak memory (``ru_maxrss``) is its own:

- a training step of LRURec (the default config, max_len 50) with each loss, ``full``, ``chunked`` and ``sampled``:
  median step time over ``--steps`` steps after two warm-up steps, the process's peak RSS, and the RSS the steps
  added on top of the loaded data (the step's own memory); the step is fit's (objective, backward, clipping,
  fit's AdamW);
- ``llamarec candidates`` (``export_candidates``) of an untrained LRURec for every validation and test user:
  wall time and peak RSS, at ``--export-users`` users (default ``--users``) and at a tenth of them (the same
  items), to show that memory does not grow with users x items, and the time per user query.

Also measured here, in the same run: the fp32 and bf16 matmul rates of the export's scoring block, for the floor
of the export (2 x users x items x d FLOP per split). Results go to ``benchmarks/results/retrieval-scale.{json,md}``.

Run (from the repository root)::

    .venv/bin/python benchmarks/retrieval.py --scale                      # 1M items, 1M users
    .venv/bin/python benchmarks/retrieval.py --scale --items 100000 --users 100000 --steps 5   # a quick look
    .venv/bin/python benchmarks/retrieval.py --scale --no-steps --export-users 100000    # the export alone

A run re-measures the rows it measures and keeps the earlier run's other rows (each with its command).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
GIB = 1 << 30
NAME = "synthetic"
LOSSES = ("full", "chunked", "sampled")


def rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / GIB


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB


def generate(workdir: Path, name: str, users: int, items: int, seed: int) -> dict:
    """Write the synthetic dataset artifact; return its statistics."""
    import numpy as np
    import polars as pl

    from llamarec_cli.data.artifact import write_dataset
    from llamarec_cli.data.pipeline import SPLITS, Tables

    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.zipf(2.0, users) + 2, 200)  # at least 3: one training item, validation, test
    popularity = 1.0 / np.arange(1, items + 1) ** 1.05
    shuffled_ids = rng.permutation(items) + 1  # the most popular item is not id 1
    picks = rng.choice(items, size=int(lengths.sum()), p=popularity / popularity.sum())
    user = np.repeat(np.arange(1, users + 1, dtype=np.uint32), lengths)
    ends = np.cumsum(lengths)
    position = np.arange(len(user)) - np.repeat(ends - lengths, lengths)
    from_end = np.repeat(lengths, lengths) - position  # 1 for the last item of a user
    split = np.where(from_end == 1, "test", np.where(from_end == 2, "val", "train"))
    interactions = pl.DataFrame(
        {
            "user": user,
            "item": shuffled_ids[picks].astype(np.uint32),
            "timestamp": position.astype(np.int64),
            "split": pl.Series(split, dtype=SPLITS),
        }
    )
    ids, user_ids = np.arange(1, items + 1, dtype=np.uint32), np.arange(1, users + 1, dtype=np.uint32)
    tables = Tables(
        interactions=interactions,
        items=pl.DataFrame({"item": ids, "original_id": ids.astype(str), "title": [f"Item {i}" for i in ids]}),
        users=pl.DataFrame({"user": user_ids, "original_id": user_ids.astype(str)}),
    )
    stats = {"users": users, "items": items, "interactions": len(interactions), "mean_length": float(lengths.mean())}
    write_dataset(workdir, name, tables, {"dataset": name, "description": "synthetic, power-law", "statistics": stats})
    return stats


def step_run(args) -> dict:
    """Median time and memory of fit's training step with one loss."""
    import torch

    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.retrieval.data import pad_left, training_windows
    from llamarec_cli.retrieval.lru import LRURec, LRURecConfig
    from llamarec_cli.retrieval.train import Objective, loss_and_gradients, make_optimizer

    torch.manual_seed(0)
    dataset = load_dataset(Path(args.workdir), NAME)
    config = LRURecConfig(max_len=50, batch_size=args.batch_size, loss=args.loss)
    model = LRURec(config, dataset.num_items).train()
    windows = training_windows(list(dataset.sequences("train").values()), config.max_len)
    objective = Objective(model, windows)
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    loaded = rss_gib()
    generator = torch.Generator().manual_seed(1)
    times, positions = [], []
    for step in range(args.steps + 2):
        rows = torch.randint(len(windows), (config.batch_size,), generator=generator).tolist()
        batch = pad_left([windows[i] for i in rows])
        began = time.perf_counter()
        loss_and_gradients(objective, model, optimizer, batch)
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - began)
            positions.append(int((batch[:, 1:] > 0).sum()))
    return {
        "loss": args.loss,
        "step_ms_median": round(1000 * statistics.median(times), 1),
        "steps_per_second": round(1 / statistics.median(times), 3),
        "positions_per_step_mean": round(statistics.fmean(positions), 1),
        "peak_rss_gib": round(peak_gib(), 2),
        "rss_after_loading_gib": round(loaded, 2),
        "step_added_gib": round(peak_gib() - loaded, 2),
        "windows": len(windows),
    }


def export_run(args) -> dict:
    """``export_candidates`` of an untrained LRURec for every validation and test user."""
    import torch

    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.retrieval.lru import LRURec, LRURecConfig
    from llamarec_cli.stages.candidates import export_candidates
    from llamarec_cli.stages.retrieve_train import write_checkpoint

    workdir = Path(args.workdir)
    dataset = load_dataset(workdir, args.dataset_name)
    torch.manual_seed(0)
    write_checkpoint(workdir, dataset, "lrurec", LRURec(LRURecConfig(max_len=50), dataset.num_items), {"metrics": {}})
    del dataset
    loaded = rss_gib()
    began = time.perf_counter()
    manifest = export_candidates(args.dataset_name, workdir=workdir, k=20, device="cpu")
    seconds = time.perf_counter() - began
    return {
        "users": manifest["splits"]["test"]["users"],
        "user_queries": sum(s["users"] for s in manifest["splits"].values()),
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak_gib(), 2),
        "rss_before_gib": round(loaded, 2),
    }


def matmul_rates() -> dict:
    """GFLOP/s of the export's scoring multiplies on this machine, into a reused buffer as the export computes them:
    fp32 in the fp32 scan's block (MAX_ROWS queries x 64 by 64 x the items of one CPU block), bf16 in bf16_search's
    chunk (CHUNK_ITEMS items x 64 by 64 x ROWS users)."""
    import torch

    from llamarec_cli.retrieval import bf16_search
    from llamarec_cli.retrieval.evaluate import CPU_BLOCK_FLOATS, MAX_ROWS

    shapes = {
        "float32": (MAX_ROWS, CPU_BLOCK_FLOATS // MAX_ROWS),
        "bfloat16": (bf16_search.CHUNK_ITEMS, bf16_search.ROWS),
    }
    rates = {}
    for name, (rows, columns) in shapes.items():
        dtype = getattr(torch, name)
        left, right = torch.randn(rows, 64, dtype=dtype), torch.randn(64, columns, dtype=dtype)
        out = left @ right
        times = []
        for _ in range(50):
            began = time.perf_counter()
            torch.matmul(left, right, out=out)
            times.append(time.perf_counter() - began)
        rates[name] = round(2 * rows * 64 * columns / statistics.median(times) / 1e9, 1)
    return rates


def child(args, mode: str, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--workdir", args.workdir, *extra]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        return {"failed": f"exit {done.returncode} of `{shlex.join(command)}`"}  # "command" is the run's own
    return json.loads(done.stdout.strip().splitlines()[-1])


def failed_row(label: str, run: dict, columns: int) -> str:
    return f"| {label} | failed: {run['failed']} |" + " |" * (columns - 2)


def markdown(data: dict) -> str:
    d, rates = data["dataset"], data["matmul_gflops"]
    lines = [
        "# Retriever at scale (synthetic, power-law)",
        "",
        "Commands: "
        + ", ".join(
            f"`{c}`" for c in dict.fromkeys(r.get("command", data["command"]) for r in data["steps"] + data["exports"])
        )
        + "  ",
        f"Machine: {data['machine']}; {data['date']}. Dataset: {d['users']:,} users, {d['items']:,} items, "
        f"{d['interactions']:,} interactions (mean history {d['mean_length']:.1f}).",
        "",
        "## A training step (LRURec, max_len 50, batch " + str(data["batch_size"]) + ")",
        "",
        "| loss | median step | steps/s | positions/step | peak RSS | RSS after loading | added by the steps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in data["steps"]:
        if "failed" in run:
            lines.append(failed_row(run.get("loss", "?"), run, columns=7))
            continue
        lines.append(
            f"| {run['loss']} | {run['step_ms_median']:.0f} ms | {run['steps_per_second']:.2f} | "
            f"{run['positions_per_step_mean']:.0f} | {run['peak_rss_gib']:.2f} GiB | "
            f"{run['rss_after_loading_gib']:.2f} GiB | {run['step_added_gib']:.2f} GiB |"
        )
    lines += ["", "## Candidate export (`llamarec candidates`, top 20, every validation and test user)", ""]
    lines += [
        "| users | user queries | time | per 1,000 queries | peak RSS | floor (bf16 / fp32) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for run in data["exports"]:
        if "failed" in run:
            lines.append(failed_row("?", run, columns=6))
            continue
        flop = 2 * run["user_queries"] * d["items"] * 64
        floors = f"{flop / rates['bfloat16'] / 1e9:.0f} s / {flop / rates['float32'] / 1e9:.0f} s"
        per_thousand = 1000 * run["seconds"] / run["user_queries"]
        lines.append(
            f"| {run['users']:,} | {run['user_queries']:,} | {run['seconds']:.0f} s | {per_thousand:.2f} s | "
            f"{run['peak_rss_gib']:.2f} GiB | {floors} |"
        )
    lines += [
        "",
        f"Floor: the scoring matmuls alone (2 x user queries x items x 64 FLOP) at this machine's rate for the "
        f"shape each dtype is multiplied in (measured in the run of the latest command): {rates['float32']:.0f} "
        f"GFLOP/s fp32 (the fp32 scan's block), {rates['bfloat16']:.0f} GFLOP/s bf16 (bf16_search's chunk). On a "
        "CPU with fast bf16 the export scores every item in bf16 and re-scores each user's short list in fp32 "
        "(exact); elsewhere it is the fp32 scan.",
        "",
    ]
    return "\n".join(lines)


def merged(data: dict) -> dict:
    """This run's rows over the earlier run's of the same dataset and batch (``--losses sampled --no-export``
    re-measures one row and keeps the rest); each row keeps the command that measured it."""
    for run in data["steps"] + data["exports"]:
        run["command"] = data["command"]
    path = RESULTS / "retrieval-scale.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    if old.get("dataset") != data["dataset"] or old.get("batch_size") != data["batch_size"]:
        return data
    for key, field in (("steps", "loss"), ("exports", "users")):
        rows = {run.get(field): run | {"command": run.get("command", old["command"])} for run in old[key]}
        rows |= {run.get(field): run for run in data[key]}
        rank = LOSSES.index if key == "steps" else int
        data[key] = sorted(rows.values(), key=lambda run: rank(run[field]) if field in run else -1)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--no-export", action="store_true", help="measure the training steps only")
    parser.add_argument("--no-steps", action="store_true", help="measure the candidate export only")
    parser.add_argument("--export-users", type=int, help="users of the export's dataset (default: --users)")
    parser.add_argument("--workdir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "llamarec-bench-scale"))
    parser.add_argument("--child", choices=("step", "export"), help=argparse.SUPPRESS)
    parser.add_argument("--loss", help=argparse.SUPPRESS)
    parser.add_argument("--dataset-name", default=NAME, help=argparse.SUPPRESS)
    parser.add_argument("--scale", action="store_true", help=argparse.SUPPRESS)  # from benchmarks/retrieval.py
    args = parser.parse_args()
    if args.child:
        print(json.dumps(step_run(args) if args.child == "step" else export_run(args)))
        return

    command = "python benchmarks/retrieval.py --scale " + shlex.join(a for a in sys.argv[1:] if a != "--scale")
    workdir = Path(args.workdir)
    began = time.perf_counter()
    stats = generate(workdir, NAME, args.users, args.items, seed=0)
    print(f"generated {stats} in {time.perf_counter() - began:.0f} s", flush=True)
    data = {
        "command": command,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "dataset": stats,
        "batch_size": args.batch_size,
        "matmul_gflops": matmul_rates(),
        "steps": [],
        "exports": [],
    }
    for loss in [] if args.no_steps else args.losses:
        run = child(args, "step", ["--loss", loss, "--steps", str(args.steps), "--batch-size", str(args.batch_size)])
        print(loss, run, flush=True)
        data["steps"].append(run | {"loss": loss})
    if not args.no_export:
        users = args.export_users or args.users
        sizes = [(f"{NAME}-tenth", max(users // 10, 1), 1)]
        sizes.append((NAME, users, 0) if users == args.users else (f"{NAME}-export", users, 2))
        for name, count, seed in sizes:
            if name != NAME:
                generate(workdir, name, count, args.items, seed=seed)
            run = child(args, "export", ["--dataset-name", name])
            print(name, run, flush=True)
            data["exports"].append(run)
    data = merged(data)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrieval-scale.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "retrieval-scale.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
