"""Benchmark: the LLM ranker on ml-100k with smollm2-135m on CPU, next to the paper's Tables 1 and 3 (METHOD.md §7).

Four orders of the same test requests (the valid retrieval subset: test users whose true item is among LRURec's top
20): the retriever's own order, the zero-shot ranker, and the ranker trained with random negatives (the paper) and
with retrieved negatives (the retriever's own candidates for training prefixes). Overall metrics (all test users)
follow from subset x hit-rate@20. Each stage runs as the CLI command a user would type, in a subprocess; its wall
time is recorded. Results go to ``benchmarks/results/ranking.json`` and ``ranking.md`` after every stage, so an
interrupted benchmark keeps what it measured, and a rerun skips finished stages.

The retriever is taken from a finished retrieval benchmark (``--retrieval-workdir``, the default of
benchmarks/retrieval.py) when there is one, else trained here with the default settings (hours on a CPU).

Run (from the repository root)::

    .venv/bin/python benchmarks/ranking.py                       # the budget below, about an hour per ranker
    .venv/bin/python benchmarks/ranking.py --train-examples 1024 --fresh
    .venv/bin/python benchmarks/ranking.py --reevaluate            # new evaluation code, same trained rankers
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LLAMAREC_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"
LLAMAREC = [sys.executable, "-m", "llamarec_cli"]

# METHOD.md §7: Table 3 (valid retrieval subset) and Table 1 (all users), ML-100k.
PAPER_SUBSET = {
    "LRURec order": {"NDCG@10": 0.3367, "Recall@10": 0.6654},
    "LlamaRec (Llama 2 7B)": {"NDCG@10": 0.3766, "Recall@10": 0.7560},
}
PAPER_OVERALL = {
    "LRURec": {
        "MRR@5": 0.0390,
        "NDCG@5": 0.0468,
        "Recall@5": 0.0705,
        "MRR@10": 0.0491,
        "NDCG@10": 0.0705,
        "Recall@10": 0.1426,
    },
    "LlamaRec": {
        "MRR@5": 0.0440,
        "NDCG@5": 0.0543,
        "Recall@5": 0.0852,
        "MRR@10": 0.0529,
        "NDCG@10": 0.0759,
        "Recall@10": 0.1524,
    },
}
COLUMNS = ("MRR@5", "NDCG@5", "Recall@5", "MRR@10", "NDCG@10", "Recall@10")


def run(args: list[str], env: dict) -> float:
    """Run one CLI command, streaming its output; return its wall time."""
    print("$ llamarec " + shlex.join(args), flush=True)
    began = time.perf_counter()
    subprocess.run([*LLAMAREC, *args], env=env, check=True)
    return time.perf_counter() - began


def prepare(workdir: Path, retrieval_workdir: Path, env: dict) -> str:
    """The dataset and a trained LRURec in ``workdir``: copied from the retrieval benchmark, or made here."""
    source = retrieval_workdir / "ml-100k"
    target = workdir / "ml-100k"
    for part in ("dataset", "retriever/lrurec"):
        if not (target / part).exists() and (source / part / "manifest.json").is_file():
            shutil.copytree(source / part, target / part)
    if not (target / "dataset").exists():
        run(
            ["preprocess", "ml-100k", "-w", str(workdir), "--raw-dir", str(SHARED / "datasets" / "ml-latest-small")],
            env,
        )
    if not (target / "retriever" / "lrurec" / "manifest.json").is_file():
        run(["retrieve-train", "ml-100k", "-w", str(workdir)], env)
        return "trained here (default settings)"
    return f"copied from {source / 'retriever' / 'lrurec'}"


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ranking.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (RESULTS / "ranking.md").write_text(markdown(data))


def markdown(data: dict) -> str:
    lines = [
        "# Ranking benchmark (ml-100k, smollm2-135m, CPU)",
        "",
        "Written by `benchmarks/ranking.py`. Test users whose true item is among LRURec's top 20 (the valid",
        "retrieval subset, paper Table 3), ranked by each order; overall = subset x hit-rate@20 (paper Table 1).",
        "",
        f"- command: `{data.get('command', '')}` ({data.get('date', '')}, {data.get('machine', '')})",
        f"- retriever: {data.get('retriever', '')}",
        f"- budget: {data.get('budget', '')}",
    ]
    stages = data.get("stages", {})
    if "subset_users" in data:
        lines.append(
            f"- subset: {data['subset_users']} of {data['test_users']} test users (hit-rate@20 {data['hit_rate']:.4f})"
        )
    lines += [
        "",
        "## Valid retrieval subset",
        "",
        "| order | NDCG@10 | Recall@10 | MRR@10 | NDCG@5 | Recall@5 | NDCG@10 minus retriever order (95%) "
        "| users up / down | time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, stage in stages.items():
        m = stage.get("subset")
        if m:
            d = stage.get("paired")
            paired = " | "
            if d:
                paired = f"{d['difference']:+.4f} ± {d['half_width'] or 0:.4f} | {d['better']} / {d['worse']}"
            lines.append(
                f"| {name} | {m['NDCG@10']:.4f} | {m['Recall@10']:.4f} | {m['MRR@10']:.4f} | {m['NDCG@5']:.4f} | "
                f"{m['Recall@5']:.4f} | {paired} | {stage.get('time', '')} |"
            )
    m = random_order(20)
    lines.append(
        f"| random order (expected) | {m['NDCG@10']:.4f} | {m['Recall@10']:.4f} | {m['MRR@10']:.4f} | "
        f"{m['NDCG@5']:.4f} | {m['Recall@5']:.4f} | | | |"
    )
    for name, m in PAPER_SUBSET.items():
        lines.append(f"| paper: {name} | {m['NDCG@10']:.4f} | {m['Recall@10']:.4f} | | | | | | |")
    lines += [
        "",
        "The paired column is each ranker's NDCG@10 minus the retriever order's, user by user, with a 95% interval:",
        "an interval that contains 0 is a difference this subset cannot tell from chance.",
    ]
    lines += ["", "## All test users", "", "| order | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, stage in stages.items():
        m = stage.get("overall")
        if m:
            lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in COLUMNS) + " |")
    for name, m in PAPER_OVERALL.items():
        lines.append(f"| paper: {name} | " + " | ".join(f"{m[c]:.4f}" for c in COLUMNS) + " |")
    if data.get("training"):
        lines += [
            "",
            "## Training",
            "",
            "| ranker | examples | steps | best step | val NDCG@10 (sample) | time |",
            "|---|---|---|---|---|---|",
        ]
        for name, t in data["training"].items():
            lines.append(
                f"| {name} | {t['train_examples']} | {t['steps']} | {t['best_step']} | "
                f"{t['val_metrics'].get('NDCG@10', 0):.4f} | {t['time']} |"
            )
    return "\n".join(lines) + "\n"


def random_order(k: int) -> dict[str, float]:
    """What a ranker that shuffles the k candidates scores on average: the true item is equally likely anywhere."""
    out = {}
    for cut in (5, 10):
        ranks = range(1, min(cut, k) + 1)
        out[f"NDCG@{cut}"] = sum(1 / math.log2(r + 1) for r in ranks) / k
        out[f"Recall@{cut}"] = len(ranks) / k
        out[f"MRR@{cut}"] = sum(1 / r for r in ranks) / k
    return out


def resume_or_restart(workdir: Path, name: str) -> str:
    """Continue an interrupted training of this benchmark (same flags), else start afresh."""
    state = workdir / "ml-100k" / "ranker" / f".{name}.partial" / "training" / "state.safetensors"
    return "--resume" if state.is_file() else "--restart"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamarec-bench-ranking"))
    parser.add_argument("--retrieval-workdir", type=Path, default=Path("/tmp/llamarec-bench-retrieval"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-examples", type=int, default=256)
    parser.add_argument("--val-examples", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup-steps", type=int, default=8)
    parser.add_argument("--negatives", nargs="+", default=["random", "retrieved"])
    parser.add_argument("--fresh", action="store_true", help="forget earlier results and rerun every stage")
    parser.add_argument("--reevaluate", action="store_true", help="evaluate again, keeping the trained rankers")
    args = parser.parse_args()

    env = os.environ | {"LLAMAREC_WORKDIR": str(args.workdir)}
    data = {} if args.fresh else load(RESULTS / "ranking.json")
    data |= {
        "command": "python benchmarks/ranking.py " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "budget": f"{args.train_examples} training examples, batch {args.batch_size}, lr {args.lr}, warm-up "
        f"{args.warmup_steps}, validation on {args.val_examples} sampled users every {args.eval_every} steps",
    }
    data.setdefault("stages", {})
    if args.reevaluate:
        data["stages"] = {}
    data.setdefault("training", {})
    if args.fresh:
        shutil.rmtree(args.workdir, ignore_errors=True)
    data["retriever"] = prepare(args.workdir, args.retrieval_workdir, env)
    run(["candidates", "ml-100k"], env)

    def evaluate(stage: str, extra: list[str], report_name: str) -> None:
        if stage in data["stages"]:
            return
        seconds = run(["evaluate", "ml-100k", *extra], env)
        report = load(args.workdir / "ml-100k" / "reports" / f"evaluate-{report_name}.json")
        data.update(test_users=report["test_users"], subset_users=report["subset_users"], hit_rate=report["hit_rate"])
        if stage == "retriever order":
            data["stages"][stage] = {"subset": report["subset"]["retriever"], "overall": report["overall"]["retriever"]}
        else:
            data["stages"][stage] = {
                "subset": report["subset"]["ranker"],
                "overall": report["overall"]["ranker"],
                "paired": report["paired"],
                "time": minutes(seconds),
            }
        save(data)

    evaluate("retriever order", ["--ranker", "none"], "retriever")
    evaluate(f"zero-shot {args.model}", ["--adapter", "none", "--model", args.model], "zero-shot")
    for negatives in args.negatives:
        name = f"trained, {negatives} negatives"
        if name not in data["training"]:
            seconds = run(
                [
                    *("rank-train", "ml-100k", "--name", negatives, "--model", args.model, "--negatives", negatives),
                    *("--max-train-examples", str(args.train_examples), "--max-val-examples", str(args.val_examples)),
                    *("--eval-every", str(args.eval_every), "--batch-size", str(args.batch_size), "--lr", str(args.lr)),
                    *("--warmup-steps", str(args.warmup_steps), resume_or_restart(args.workdir, negatives)),
                ],
                env,
            )
            manifest = load(args.workdir / "ml-100k" / "ranker" / negatives / "manifest.json")
            keep = ("train_examples", "steps", "best_step", "val_metrics", "validations")
            data["training"][name] = {k: manifest[k] for k in keep} | {"time": minutes(seconds)}
            save(data)
        evaluate(name, ["--ranker", negatives], negatives)
    save(data)
    print((RESULTS / "ranking.md").read_text())


if __name__ == "__main__":
    main()
