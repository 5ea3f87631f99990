"""Benchmark: train retrievers with the default settings and compare with the paper's Table 1 (METHOD.md §7).

For each dataset and retriever it runs, in a fresh subprocess (so the peak memory is that run's alone):
preprocess (ml-100k from the raw MovieLens files in ../shared, beauty and games from the paper's own splits in
../shared), ``train_retriever`` with the default config (early stopping on validation Recall@10), and
``export_candidates`` (top 20). It records the test metrics (whole history masked, all items ranked, exact
averages over users), hit-rate@20, epochs and steps to early stop, wall time, steps per second and peak memory.

Runs are long (tens of minutes each on 2 cores): each finished run is merged into
``benchmarks/results/retrieval.json`` at once and ``retrieval.md`` is rewritten, so an interrupted benchmark
keeps what it measured. ``--profile`` prints where the time of a training step goes instead.

Run (from the repository root)::

    .venv/bin/python benchmarks/retrieval.py                                   # LRURec on all three datasets
    .venv/bin/python benchmarks/retrieval.py --datasets ml-100k --retrievers sasrec bert4rec narm
    .venv/bin/python benchmarks/retrieval.py --datasets beauty --set dropout=0.3 --set weight_decay=0
    .venv/bin/python benchmarks/retrieval.py --profile --datasets ml-100k beauty
    .venv/bin/python benchmarks/retrieval.py --throughput --datasets ml-100k beauty games   # steps/s only
    .venv/bin/python benchmarks/retrieval.py --throughput --set loss=sampled   # ... with another loss
    .venv/bin/python benchmarks/retrieval.py --scale    # 1M items and users: step memory, export (retrieval_scale.py)
    .venv/bin/python benchmarks/retrieval.py --resume          # continue interrupted runs (exact, see --resume)
    .venv/bin/python benchmarks/retrieval.py --grid --resume --datasets games --dropouts 0.3 0.4 0.5
    # finished runs minus the default run, user by user on the same test users (95% paired interval):
    .venv/bin/python benchmarks/retrieval.py --paired /tmp/llamarec-bench-retrieval --grid --datasets games ...
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LLAMAREC_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"

# METHOD.md §7, Table 1 (LRU column and the baselines' Recall@10 / NDCG@10); hit-rate@20 from §3.
PAPER = {
    "ml-100k": {
        "lrurec": {
            "MRR@5": 0.0390,
            "NDCG@5": 0.0468,
            "Recall@5": 0.0705,
            "MRR@10": 0.0491,
            "NDCG@10": 0.0705,
            "Recall@10": 0.1426,
            "HitRate@20": 0.2016,
        },
        "narm": {"Recall@10": 0.0801, "NDCG@10": 0.0441},
        "bert4rec": {"Recall@10": 0.0785, "NDCG@10": 0.0366},
        "sasrec": {"Recall@10": 0.0993, "NDCG@10": 0.0522},
    },
    "beauty": {
        "lrurec": {
            "MRR@5": 0.0376,
            "NDCG@5": 0.0435,
            "Recall@5": 0.0614,
            "MRR@10": 0.0417,
            "NDCG@10": 0.0533,
            "Recall@10": 0.0916,
            "HitRate@20": 0.1278,
        },
        "narm": {"Recall@10": 0.0746, "NDCG@10": 0.0420},
        "bert4rec": {"Recall@10": 0.0686, "NDCG@10": 0.0372},
        "sasrec": {"Recall@10": 0.0844, "NDCG@10": 0.0481},
    },
    "games": {
        "lrurec": {
            "MRR@5": 0.0533,
            "NDCG@5": 0.0640,
            "Recall@5": 0.0966,
            "MRR@10": 0.0598,
            "NDCG@10": 0.0800,
            "Recall@10": 0.1463,
            "HitRate@20": 0.2126,
        },
        "narm": {"Recall@10": 0.1351, "NDCG@10": 0.0729},
        "bert4rec": {"Recall@10": 0.1214, "NDCG@10": 0.0649},
        "sasrec": {"Recall@10": 0.1446, "NDCG@10": 0.0783},
    },
}
COLUMNS = ("MRR@5", "NDCG@5", "Recall@5", "MRR@10", "NDCG@10", "Recall@10", "HitRate@20")


def preprocess(dataset: str, workdir: Path) -> None:
    from llamarec_cli.data.artifact import dataset_dir
    from llamarec_cli.stages.preprocess import preprocess as run

    if (dataset_dir(workdir, dataset) / "manifest.json").is_file():
        return
    if dataset == "ml-100k":
        run(dataset, workdir=workdir, raw_dir=SHARED / "datasets" / "ml-latest-small")
    else:
        run(dataset, workdir=workdir, from_split=SHARED / "datasets" / dataset / "llamarec-split.json")


def parse_sets(items: list[str]) -> dict:
    return dict(item.split("=", 1) for item in items)


def one_run(args) -> dict:
    """Preprocess, train, export: in this (fresh) process."""
    import torch

    from llamarec_cli.cli.progress import RichReporter
    from llamarec_cli.config import parse_sets as typed_sets
    from llamarec_cli.layout import Workdir
    from llamarec_cli.retrieval.checkpoint import retriever_dir
    from llamarec_cli.stages.candidates import export_candidates
    from llamarec_cli.stages.retrieve_train import retriever_class, train_retriever

    workdir = Path(args.workdir)
    preprocess(args.dataset, workdir)
    cls = retriever_class(args.retriever)
    flags = typed_sets(cls.Config, args.set)
    began = time.perf_counter()
    resume = args.resume and Workdir(workdir).resumable(retriever_dir(workdir, args.dataset, args.retriever))
    manifest = train_retriever(
        args.dataset,
        workdir=workdir,
        retriever=args.retriever,
        flags=flags,
        device="cpu",
        resume=resume,
        restart=not resume,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        reporter=RichReporter if args.progress else None,
    )
    candidates = export_candidates(args.dataset, workdir=workdir, retriever=args.retriever, k=20, device="cpu")
    test = manifest["metrics"]["test"]
    training = manifest["training"]
    return {
        "dataset": args.dataset,
        "retriever": args.retriever,
        "flags": parse_sets(args.set),
        "config": manifest["config"],
        "test": {**test, "HitRate@20": candidates["splits"]["test"]["hit_rate"]},
        "test_users": candidates["splits"]["test"]["users"],
        "val": {**manifest["metrics"]["val"], "HitRate@20": candidates["splits"]["val"]["hit_rate"]},
        "steps": training["steps"],
        "epochs": training["epochs"],
        "best_step": training["best_step"],
        "stopped_early": training["stopped_early"],
        "wall_seconds": round(time.perf_counter() - began, 1),
        "train_seconds": training["train_seconds"],
        "steps_per_second": training["steps_per_second"],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(),
    }


def throughput(args) -> dict:
    """Steps per second of the training step alone (median of 5 rounds of 20 steps), default config and --set."""
    import statistics

    import torch

    from llamarec_cli.config import parse_sets as typed_sets
    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.retrieval.data import pad_left, training_windows
    from llamarec_cli.retrieval.train import Objective, loss_and_gradients, make_optimizer
    from llamarec_cli.stages.retrieve_train import resolve_config, retriever_class

    workdir = Path(args.workdir)
    preprocess(args.dataset, workdir)
    dataset = load_dataset(workdir, args.dataset)
    cls = retriever_class(args.retriever)
    flags = typed_sets(cls.Config, args.set)
    config, _ = resolve_config(cls, args.dataset, flags)
    torch.manual_seed(0)
    model = cls(config, dataset.num_items).train()
    windows = training_windows(list(dataset.sequences("train").values()), config.max_len)
    objective, optimizer = Objective(model, windows), make_optimizer(model, config, torch.device("cpu"))
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(0)).tolist()

    def step(i):  # as llamarec_cli/retrieval/train.py's train_step
        rows = [windows[order[(i * config.batch_size + j) % len(windows)]] for j in range(config.batch_size)]
        loss_and_gradients(objective, model, optimizer, pad_left(rows)).item()
        optimizer.step()

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for i in range(5):
            step(i)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(5, 25):
                step(i)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    rounds = []
    for r in range(6):
        began = time.perf_counter()
        for i in range(20):
            step(100 + r * 20 + i)
        rounds.append(20 / (time.perf_counter() - began))
    return {
        "dataset": args.dataset,
        "retriever": args.retriever,
        "flags": parse_sets(args.set),
        "steps_per_second": statistics.median(rounds[1:]),
        "rounds": [round(x, 2) for x in rounds[1:]],
        "threads": torch.get_num_threads(),
    }


def interim(args) -> dict:
    """Test metrics of the best weights so far of a run that has not early-stopped yet (read from its saved
    training state; the run itself is left untouched and can go on with --resume)."""
    import torch

    from llamarec_cli.artifacts import load_state
    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.layout import Workdir
    from llamarec_cli.retrieval.checkpoint import partial_dir
    from llamarec_cli.retrieval.contract import build_config
    from llamarec_cli.retrieval.data import eval_set, training_windows
    from llamarec_cli.retrieval.evaluate import top_k
    from llamarec_cli.stages.retrieve_train import retriever_class

    workdir = Path(args.workdir)
    dataset = load_dataset(workdir, args.dataset)
    partial = partial_dir(workdir, args.dataset, args.retriever)
    run = json.loads((partial / "run.json").read_text())
    cls = retriever_class(args.retriever)
    config, _ = build_config(cls.Config, [("checkpoint", run["config"])])
    model = cls(config, dataset.num_items)
    tensors, counters = load_state(Workdir.state(partial))
    windows = training_windows(list(dataset.sequences("train").values()), config.max_len)
    model.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("best.")})
    out = {}
    for split in ("val", "test"):
        data = eval_set(dataset, split)
        items, _, metrics = top_k(model, data, torch.device("cpu"), 20)
        hits = (items == torch.tensor(data.targets).view(-1, 1)).any(1).float().mean().item()
        out[split] = {**metrics, "HitRate@20": hits}
    return {
        "test_users": len(eval_set(dataset, "test").users),
        "dataset": args.dataset,
        "retriever": args.retriever,
        "flags": parse_sets(args.set),
        "config": run["config"],
        **out,
        "steps": counters["step"],
        "epochs": round(counters["step"] / -(-len(windows) // config.batch_size), 2),
        "best_step": counters["best_step"],
        "validations_without_gain": counters["bad"],
        "stopped_early": False,
        "wall_seconds": counters["train_seconds"],
        "train_seconds": counters["train_seconds"],
        "steps_per_second": counters["step"] / counters["train_seconds"],
        "peak_rss_mib": float("nan"),
        "threads": torch.get_num_threads(),
    }


def test_ranks(workdir: Path, dataset_name: str, retriever: str) -> list[float]:
    """The test item's exact rank for every test user, from a finished checkpoint (all scores, users in batches)."""
    import torch

    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.evaluation.metrics import mask_history, ranks
    from llamarec_cli.retrieval.data import eval_set, pad_left
    from llamarec_cli.stages.retrieve_train import load_retriever

    dataset = load_dataset(workdir, dataset_name)
    model, _ = load_retriever(workdir, dataset, retriever)
    data, found = eval_set(dataset, "test"), []
    with torch.no_grad():
        for start in range(0, len(data), 256):
            histories = data.histories[start : start + 256]
            scores = model.score(pad_left([h[-model.config.max_len :] for h in histories])).float()
            mask_history(scores, pad_left(histories))
            found += ranks(scores, torch.tensor(data.targets[start : start + 256])).tolist()
    return found


def paired(args) -> dict:
    """A finished run minus the run in --paired (same dataset and retriever), per test user: whether a gap that
    looks like chance between two independent figures is more than chance when both rank the same users."""
    from llamarec_cli.evaluation.metrics import paired_difference

    ours = test_ranks(Path(args.workdir), args.dataset, args.retriever)
    base = test_ranks(Path(args.paired), args.dataset, args.retriever)
    return {
        "dataset": args.dataset,
        "retriever": args.retriever,
        "flags": parse_sets(args.set),
        "against": args.paired,
        **{m: paired_difference(ours, base, k=10, metric=m) for m in ("Recall", "NDCG")},
    }


def finished() -> dict:
    path = RESULTS / "retrieval.json"
    return json.loads(path.read_text()).get("runs", {}) if path.is_file() else {}


def key(result: dict) -> str:
    flags = ",".join(f"{k}={v}" for k, v in sorted(result.get("flags", {}).items()))
    return f"{result['dataset']}/{result['retriever']}" + (f" [{flags}]" if flags else "")


def merge(result: dict, section: str, command: str) -> None:
    """Add one result to retrieval.json and rewrite retrieval.md. Benchmarks run side by side (one per core), so
    the read-modify-write holds a lock and each file is replaced atomically: no result is lost, none half-written."""
    import fcntl

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "retrieval.json"
    with open(RESULTS / ".retrieval.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.setdefault(section, {})[key(result)] = {
            **result,
            "command": command,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"),
        }
        if section == "runs":  # a finished run replaces its interim figures
            data.get("interim", {}).pop(key(result), None)
        replace_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        replace_text(RESULTS / "retrieval.md", markdown(data))


def replace_text(path: Path, text: str) -> None:
    """A reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def recall_half_width(run: dict) -> float:
    """How far Recall@10 can move by chance alone: half the 95% interval of a proportion over the test users."""
    p = run["test"]["Recall@10"]
    return 1.96 * math.sqrt(p * (1 - p) / run["test_users"])


def noise(run: dict, paper: dict) -> str:
    p, n, half = run["test"]["Recall@10"], run["test_users"], recall_half_width(run)
    line = f"- `{key(run)}`: Recall@10 {p:.4f} ± {half:.4f} (95% interval over {n:,} test users)"
    if "Recall@10" in paper:
        inside = abs(paper["Recall@10"] - p) <= half
        line += f"; the paper's {paper['Recall@10']:.4f} is {'inside' if inside else 'outside'} it"
    return line + "."


def table(title: str, dataset: str, rows: dict) -> list[str]:
    header = "| run | " + " | ".join(COLUMNS) + " | epochs | steps | best step | train time | steps/s | peak MiB |"
    lines = [f"## {title}", "", header, "|---|" + "---|" * (len(COLUMNS) + 6)]
    for name, run in sorted(rows.items()):
        paper = PAPER.get(dataset, {}).get(run["retriever"], {})
        ours = " | ".join(f"{run['test'][c]:.4f}" for c in COLUMNS)
        peak = "–" if run["peak_rss_mib"] != run["peak_rss_mib"] else f"{run['peak_rss_mib']:.0f}"  # NaN: not measured
        lines.append(
            f"| {name} | {ours} | {run['epochs']} | {run['steps']:,} | {run['best_step']:,} "
            f"| {run['train_seconds'] / 60:.0f} min | {run['steps_per_second']:.2f} | {peak} |"
        )
        if paper:
            cells = " | ".join(f"{paper[c]:.4f}" if c in paper else "" for c in COLUMNS)
            lines.append(f"| paper {run['retriever']} | {cells} | | | | | | |")
            deltas = " | ".join(f"{run['test'][c] / paper[c] - 1:+.1%}" if c in paper else "" for c in COLUMNS)
            lines.append(f"| ours vs paper | {deltas} | | | | | | |")
    lines.append("")
    for _, run in sorted(rows.items()):
        if "test_users" in run:
            lines.append(noise(run, PAPER.get(dataset, {}).get(run["retriever"], {})))
    for name, run in sorted(rows.items()):
        extra = ""
        if "validations_without_gain" in run:
            extra = f", {run['validations_without_gain']} validations without gain so far"
        elif run.get("stopped_early") is False:
            extra = f", stopped by the cap of {run['config']['max_epochs']} epochs, not by early stopping"
        lines.append(
            f"- `{name}`: `{run['command']}` ({run['date']}, {run['machine']}, {run['threads']} threads{extra})"
        )
    return lines + [""]


def paired_table(dataset: str, rows: dict) -> list[str]:
    def cell(d):
        return f"{d['difference']:+.4f} ± {d['half_width']:.4f}"

    lines = [
        f"## {dataset}: paired against another run (same test users)",
        "",
        "| run | minus | Recall@10 (95%, paired) | NDCG@10 (95%, paired) | test item ranked higher / lower |",
        "|---|---|---|---|---|",
    ]
    for name, run in sorted(rows.items()):
        n = run["NDCG"]
        lines.append(
            f"| {name} | `{run['against']}` | {cell(run['Recall'])} | {cell(n)} | {n['better']:,} / {n['worse']:,} |"
        )
    lines.append("")
    lines += [f"- `{name}`: `{run['command']}` ({run['date']})" for name, run in sorted(rows.items())]
    return lines + [""]


def default_config(dataset: str, retriever: str) -> dict:
    """The config ``llamarec retrieve-train DATASET --retriever NAME`` uses today, without flags."""
    from llamarec_cli.stages.retrieve_train import resolve_config, retriever_class

    return resolve_config(retriever_class(retriever), dataset, {})[0].to_dict()


def has_config(run: dict, config: dict) -> bool:
    """Whether ``run`` trained with ``config``; a field added since the run (e.g. loss) took its default then."""
    return {**config, **run["config"]} == config


def defaults_table(runs: dict, default_config=default_config) -> list[str]:
    """The headline: each finished run whose config is today's default, against the paper. Picked by config, not
    by name, so a row trained under an older default never passes for the current one."""
    lines = [
        "## Today's default settings against the paper",
        "",
        "| dataset | retriever | Recall@10 (95%) | paper | ours - paper | NDCG@10 | paper | ours - paper | run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, retrievers in PAPER.items():
        for retriever, paper in retrievers.items():
            if not any(run["dataset"] == dataset and run["retriever"] == retriever for run in runs.values()):
                continue  # e.g. the baselines' plugin is not installed
            config = default_config(dataset, retriever)
            for name, run in sorted(runs.items()):
                if run["dataset"] != dataset or run["retriever"] != retriever or not has_config(run, config):
                    continue
                recall, ndcg, half = run["test"]["Recall@10"], run["test"]["NDCG@10"], recall_half_width(run)
                lines.append(
                    f"| {dataset} | {retriever} | {recall:.4f} ± {half:.4f} | {paper['Recall@10']:.4f} "
                    f"| {recall - paper['Recall@10']:+.4f} | {ndcg:.4f} | {paper['NDCG@10']:.4f} "
                    f"| {ndcg - paper['NDCG@10']:+.4f} | `{name}` |"
                )
    return lines + [""] if len(lines) > 4 else []


def settings_table(dataset: str, runs: dict, default_config=default_config) -> list[str]:
    """Every finished run of a retriever tried with more than one config on DATASET, best validation Recall@10
    first: the paper's grid search as far as it has run. The paper chooses by validation; the test columns show
    what each choice gives. Only the config keys that differ between the runs are shown."""
    lines = []
    for retriever in sorted({run["retriever"] for run in runs.values() if run["dataset"] == dataset}):
        rows = {k: r for k, r in runs.items() if r["dataset"] == dataset and r["retriever"] == retriever}
        configs = [run["config"] for run in rows.values()]
        keys = sorted(k for k in set().union(*configs) if len({str(c.get(k)) for c in configs}) > 1)
        if not keys:
            continue  # one run, or runs that differ in nothing
        default = default_config(dataset, retriever)
        header = " | ".join(k.replace("_", " ") for k in keys)
        lines += [
            f"## {dataset}: {retriever} settings tried, best validation first",
            "",
            f"| {header} | validation Recall@10 | test Recall@10 | test NDCG@10 | best step | date | run |",
            "|" + "---|" * (len(keys) + 6),
        ]
        for name, run in sorted(rows.items(), key=lambda item: -item[1]["val"]["Recall@10"]):
            settings = " | ".join(str(run["config"].get(k, "")) for k in keys)
            val, test = run["val"]["Recall@10"], run["test"]
            mark = " (today's default)" if has_config(run, default) else ""
            lines.append(
                f"| {settings} | {val:.4f} | {test['Recall@10']:.4f} | {test['NDCG@10']:.4f} "
                f"| {run['best_step']:,} | {run['date']} | `{name}`{mark} |"
            )
        lines.append("")
    return lines


def markdown(data: dict) -> str:
    lines = [
        "# Retrieval benchmark",
        "",
        "Test metrics with the user's whole history masked and all items ranked, exact averages over users;",
        "the paper's Table 1 beside ours (METHOD.md §7). Written by `benchmarks/retrieval.py`; each row",
        "names the command that produced it.",
        "",
    ]
    lines += defaults_table(data.get("runs", {}))
    sections = [("runs", ""), ("interim", " (interim: not early-stopped yet, best weights so far)")]
    for dataset in ("ml-100k", "beauty", "games"):
        for section, label in sections:
            rows = {k: v for k, v in data.get(section, {}).items() if v["dataset"] == dataset}
            if rows:
                lines += table(dataset + label, dataset, rows)
        lines += settings_table(dataset, data.get("runs", {}))
        rows = {k: v for k, v in data.get("paired", {}).items() if v["dataset"] == dataset}
        if rows:
            lines += paired_table(dataset, rows)
    if data.get("throughput"):
        lines += [
            "## Training throughput (step alone, median of 5 rounds of 20 steps; default config, flags in brackets)",
            "",
            "| dataset/retriever | steps/s | rounds |",
            "|---|---|---|",
        ]
        for name, run in sorted(data["throughput"].items()):
            lines.append(f"| {name} | {run['steps_per_second']:.2f} | {run['rounds']} |")
        lines.append("")
        for name, run in sorted(data["throughput"].items()):
            lines.append(f"- `{name}`: `{run['command']}` ({run['date']}, {run['machine']})")
        lines.append("")
    notes = RESULTS / "retrieval-notes.md"
    if notes.is_file():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


def main() -> None:
    if "--scale" in sys.argv:  # a million items and users: benchmarks/retrieval_scale.py
        sys.path.insert(0, str(Path(__file__).parent))
        from retrieval_scale import main as scale

        return scale()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "beauty", "games"])
    parser.add_argument("--retrievers", nargs="+", default=["lrurec"])
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config override for every run")
    parser.add_argument("--workdir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "llamarec-bench-retrieval"))
    parser.add_argument("--profile", action="store_true", help="print a profile of 20 training steps")
    parser.add_argument("--throughput", action="store_true", help="measure steps/s only")
    parser.add_argument("--progress", action="store_true", help="show the training progress bar")
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs instead of restarting")
    parser.add_argument("--interim", action="store_true", help="evaluate the best weights so far of unfinished runs")
    parser.add_argument("--paired", metavar="WORKDIR", help="compare finished runs with the run in WORKDIR, paired")
    parser.add_argument("--grid", action="store_true", help="the paper's grid: every --dropouts x --weight-decays")
    parser.add_argument("--dropouts", nargs="+", default=["0.1", "0.2", "0.3", "0.4", "0.5"])
    parser.add_argument("--weight-decays", nargs="+", default=["0", "0.01"])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single run, in this process
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--retriever", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        if args.paired:
            result = paired(args)
        elif args.interim:
            result = interim(args)
        else:
            result = throughput(args) if (args.throughput or args.profile) else one_run(args)
        print(json.dumps(result))
        return

    command = "python benchmarks/retrieval.py " + shlex.join(sys.argv[1:])
    settings = [(args.set, args.workdir)]
    if args.grid:  # each grid point in its own work directory, so that all of them can be resumed
        settings = [
            (args.set + [f"dropout={d}", f"weight_decay={w}"], f"{args.workdir}-grid/dropout={d},weight_decay={w}")
            for d in args.dropouts
            for w in args.weight_decays
        ]
    for (sets, workdir), dataset, retriever in itertools.product(settings, args.datasets, args.retrievers):
        child = [
            sys.executable,
            __file__,
            "--one",
            "--dataset",
            dataset,
            "--retriever",
            retriever,
            "--workdir",
            workdir,
            *(f"--set={s}" for s in sets),
        ]
        child += (
            ["--throughput"] * args.throughput
            + ["--profile"] * args.profile
            + ["--progress"] * args.progress
            + ["--resume"] * args.resume
            + ["--interim"] * args.interim
            + ([f"--paired={args.paired}"] if args.paired else [])
        )
        print(f"== {dataset} / {retriever} {' '.join(sets)}", flush=True)
        done_key = key({"dataset": dataset, "retriever": retriever, "flags": parse_sets(sets)})
        if (
            args.resume
            and not (args.throughput or args.profile or args.interim or args.paired)
            and done_key in finished()
        ):
            print("   finished already (see results/retrieval.json); skipped", flush=True)
            continue
        completed = subprocess.run(child, stdout=subprocess.PIPE, text=True)
        if completed.returncode != 0:
            print(f"   failed (exit {completed.returncode})", flush=True)
            continue
        output = completed.stdout.strip().splitlines()
        result = json.loads(output[-1])
        print("\n".join(output[:-1]))
        print("  ", json.dumps(result), flush=True)
        if not args.profile:
            section = (
                "paired" if args.paired else "throughput" if args.throughput else "interim" if args.interim else "runs"
            )
            merge(result, section, command)


if __name__ == "__main__":
    main()
