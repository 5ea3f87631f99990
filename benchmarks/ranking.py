"""Benchmark: the LLM ranker against the retriever's own order on ml-100k, beauty and games (METHOD.md §7).

For each dataset, the same test requests (the valid retrieval subset: test users whose true item is among LRURec's
top 20, or a seeded sample of them, the same users for every order) ranked by: the retriever's own order, zero-shot
SmolLM2, and SmolLM2 trained with retrieved negatives (the retriever's candidates for training prefixes), with retrieved
negatives beside the retriever's log-probabilities (retrieved-prior: the letters learn what its order lacks) and with
random negatives (the paper's), each both pure and fused with the retriever's scores at the α that rank-train chose
on validation. Overall metrics (all test users) follow from subset x hit-rate@20.

Each stage runs as the CLI command a user would type, in a subprocess, and is timed. Results go to
``benchmarks/results/ranking.json`` and ``ranking.md`` after every stage, so an interrupted benchmark keeps what it
measured, and a rerun skips what is done (``--redo`` forgets one dataset's results).

The dataset is preprocessed here (ml-100k from the MovieLens raw files in ../shared, beauty and games from the
paper's splits); the retriever is copied from ``--retrieval-workdir`` when it holds a trained one (the layout
benchmarks/retrieval.py leaves), else trained here with the default settings.

Run (from the repository root)::

    .venv/bin/python benchmarks/ranking.py --datasets games --negatives retrieved --train-examples 768
    .venv/bin/python benchmarks/ranking.py                     # every dataset, both negatives: many hours on 2 cores
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
DATASETS = ("ml-100k", "beauty", "games")

# METHOD.md §7, Table 3: NDCG@10 / Recall@10 on the valid retrieval subset.
PAPER_SUBSET = {
    "ml-100k": {"LRURec order": (0.3367, 0.6654), "LlamaRec (Llama 2 7B)": (0.3766, 0.7560)},
    "beauty": {"LRURec order": (0.4168, 0.7170), "LlamaRec (Llama 2 7B)": (0.4337, 0.7600)},
    "games": {"LRURec order": (0.3760, 0.6879), "LlamaRec (Llama 2 7B)": (0.4173, 0.7522)},
}
VARIANT_SETTINGS = {  # rank-train settings of each --negatives variant beyond its kind
    "": (),
    "shuffled": ("--set", "shuffle_candidates=true"),
    "prior": ("--set", "loss=letters", "--set", "retriever_prior=1"),
    # LoRA on every projection, attention and MLP, at rank 16: more room to learn the titles than q/v at rank 8
    "shuffled-wide": (
        *("--set", "shuffle_candidates=true", "--set", "lora_r=16"),
        *("--set", "lora_target=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"),
    ),
}
SUBSET_COLUMNS = ("NDCG@10", "Recall@10", "MRR@10")
OVERALL_COLUMNS = ("NDCG@10", "Recall@10", "MRR@10")


DEFAULT_TRAIN_EXAMPLES = 1024
DEFAULT_MODEL = "smollm2-135m"


def run(args: list[str], env: dict) -> float:
    """Run one CLI command, streaming its output; return its wall time."""
    print("$ llamarec " + shlex.join(args), flush=True)
    began = time.perf_counter()
    subprocess.run([*LLAMAREC, *args], env=env, check=True)
    return time.perf_counter() - began


def prepare(dataset: str, workdir: Path, retrieval_workdir: Path, env: dict) -> str:
    """The dataset, a trained LRURec and its candidates in ``workdir``; says where the retriever came from."""
    source, target = retrieval_workdir / dataset, workdir / dataset
    for part in ("dataset", "retriever/lrurec"):
        if not (target / part).exists() and (source / part / "manifest.json").is_file():
            shutil.copytree(source / part, target / part)
    if not (target / "dataset" / "manifest.json").is_file():
        if dataset == "ml-100k":
            raw = ["--raw-dir", str(SHARED / "datasets" / "ml-latest-small")]
        else:
            raw = ["--from-split", str(SHARED / "datasets" / dataset / "llamarec-split.json")]
        run(["preprocess", dataset, *raw], env)
    if not (target / "retriever" / "lrurec" / "manifest.json").is_file():
        run(["retrieve-train", dataset], env)
    if not (target / "candidates" / "lrurec.json").is_file():
        run(["candidates", dataset], env)
    return describe_retriever(target / "retriever" / "lrurec" / "manifest.json")


def describe_retriever(path: Path) -> str:
    """What the retriever's own manifest says of its training: settings given by flag, steps, test figures."""
    manifest = json.loads(path.read_text())
    config, training, test = manifest["config"], manifest["training"], manifest["metrics"]["test"]
    flags = [f"{k}={config[k]}" for k, origin in manifest["config_sources"].items() if origin == "flag"]
    return (
        f"lrurec ({', '.join(flags) or 'default settings'}), best step {training['best_step']:,} of "
        f"{training['steps']:,}; test Recall@10 {test['Recall@10']:.4f}, NDCG@10 {test['NDCG@10']:.4f}"
    )


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ranking.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (RESULTS / "ranking.md").write_text(markdown(data))


def paired_cell(d: dict | None) -> str:
    if not d:
        return " | "
    return f"{d['difference']:+.4f} ± {d['half_width'] or 0:.4f} | {d['better']} / {d['worse']}"


def stage_order(name: str) -> tuple:
    ranker, fused, _ = name.partition(", fused")
    return (name != "retriever order", not name.startswith("zero-shot"), ranker, bool(fused))


def markdown(data: dict) -> str:
    lines = [
        "# Ranking benchmark: the LLM ranker against the retriever's own order (CPU; smollm2-135m unless named)",
        "",
        "Written by `benchmarks/ranking.py`. Test users whose true item is among LRURec's top 20 (the valid",
        "retrieval subset, paper Table 3), or a seeded sample of them (the same users for every order), ranked by each",
        "order; overall = subset x hit-rate@20 (paper Table 1). *Fused*: α · log_softmax(letter logits) + (1 − α) ·",
        "log_softmax(retriever scores), α chosen on validation users only (by rank-train, or by `llamarec tune-fusion`",
        "on more of them for a ranker trained before it could). The paired column is each",
        "order's NDCG@10 minus the retriever order's, user by user, with a 95% interval: an interval that contains 0",
        "is a difference these users cannot tell from chance. *First = A*: the share of users for whom the ranker puts",
        "first the candidate shown first (letter A, the retriever's top); on the retriever order's row, the share",
        "whose true item is A. A ranker far above that share leans on the position (position bias).",
    ]
    for dataset, d in data.get("datasets", {}).items():
        lines += ["", f"## {dataset}", ""]
        lines += [f"- retriever: {d.get('retriever', '')}"]
        for name, how in d.get("runs", {}).items():
            lines.append(f"- {name}: `{how['command']}` ({how['date']}, {how['machine']}); {how['budget']}")
        if "subset_users" in d:
            lines.append(
                f"- test users ranked: {d['ranked_users']:,} of the {d['subset_users']:,} in the subset "
                f"({d['test_users']:,} test users, hit-rate@20 {d['hit_rate']:.4f})"
            )
        lines += [
            "",
            "| order | "
            + " | ".join(f"subset {c}" for c in SUBSET_COLUMNS)
            + " | overall NDCG@10 | overall Recall@10 | NDCG@10 minus retriever order (95%) | users up / down "
            "| α | first = A | time |",
            "|---" * (len(SUBSET_COLUMNS) + 8) + "|",
        ]
        stages = d.get("stages", {})  # the retriever's order, zero-shot, then each ranker pure then fused
        for name in sorted(stages, key=stage_order):
            stage = stages[name]
            s, o = stage["subset"], stage["overall"]
            alpha = "" if stage.get("alpha") is None else f"{stage['alpha']:g}"
            first = "" if stage.get("first_is_a") is None else f"{stage['first_is_a']:.2f}"
            lines.append(
                f"| {name} | "
                + " | ".join(f"{s[c]:.4f}" for c in SUBSET_COLUMNS)
                + f" | {o['NDCG@10']:.4f} | {o['Recall@10']:.4f} | {paired_cell(stage.get('paired'))} | {alpha} "
                f"| {first} | {stage.get('time', '')} |"
            )
        m = random_order(20)
        lines.append(
            "| random order (expected) | " + " | ".join(f"{m[c]:.4f}" for c in SUBSET_COLUMNS) + " | | | | | | | |"
        )
        for name, (ndcg, recall) in PAPER_SUBSET.get(dataset, {}).items():
            lines.append(f"| paper: {name} | {ndcg:.4f} | {recall:.4f} | | | | | | | | |")
        if d.get("training"):
            lines += [
                "",
                "| ranker | examples | steps | best step | val NDCG@10 | val NDCG@10, retriever order | α (val users) "
                "| their NDCG@10 at α | their NDCG@10, retriever order | train time |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for name, t in d["training"].items():
                fusion = t.get("fusion") or {}
                at_alpha = fusion.get("val", {}).get(f"{fusion.get('alpha', 1):g}")
                at_zero = fusion.get("val", {}).get("0")  # the retriever's order of the same users
                order = t.get("val_order", "ranker")  # a retriever prior: validated in the fused order it trains
                validated = "" if order == "ranker" else f" ({order.replace('alpha ', 'α=')})"
                lines.append(
                    f"| {name} | {t['train_examples']} | {t['steps']} | {t['best_step']} | "
                    f"{t['val_metrics'].get('NDCG@10', 0):.4f}{validated} | "
                    f"{t.get('val_retriever_metrics', {}).get('NDCG@10', 0):.4f} | "
                    f"{fusion.get('alpha', '')} ({fusion.get('users', '')}) | "
                    f"{'' if at_alpha is None else f'{at_alpha:.4f}'} | "
                    f"{'' if at_zero is None else f'{at_zero:.4f}'} | {t['time']} |"
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


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def forget(d: dict, model: str) -> None:
    """Drop one model's rows (rows from before rows named their model are the default model's)."""
    for part in ("stages", "training"):
        rows = d.get(part, {})
        for name in [
            n for n, row in rows.items() if n != "retriever order" and row.get("model", DEFAULT_MODEL) == model
        ]:
            del rows[name]


def full_ranking(workdir: Path, dataset: str) -> dict:
    """LRURec's exact figures over all test users (its full ranking), from the candidates' manifest."""
    from llamarec_cli.stages.candidates import candidates_paths

    test = load(candidates_paths(workdir, dataset, "lrurec")[1])["splits"]["test"]
    return {f"{name}@{k}": test[f"{name}@{k}"] for k in (5, 10) for name in ("MRR", "NDCG", "Recall")}


def run_dataset(dataset: str, data: dict, budget: str, args, env: dict) -> None:
    """Every order of one dataset: retriever, zero-shot, and each trained ranker pure and fused."""
    d = data["datasets"].setdefault(dataset, {"stages": {}, "training": {}})
    d.setdefault("runs", {})
    this_run = {  # recorded beside each result this run makes, so a later run with other flags relabels nothing
        "command": "python benchmarks/ranking.py " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "budget": budget,
    }
    d["retriever"] = prepare(dataset, args.workdir, args.retrieval_workdir, env)
    save(data)
    reports = args.workdir / dataset / "reports"

    def evaluate(stage: str, extra: list[str], report_name: str) -> None:
        if stage in d["stages"]:
            return
        sample = ["--max-examples", str(args.test_examples)]
        seconds = run(["evaluate", dataset, *sample, *extra], env)
        d["runs"][stage] = this_run
        report = load(reports / f"evaluate-{report_name}.json")
        d.update({k: report[k] for k in ("test_users", "subset_users", "hit_rate", "ranked_users")})
        orders = report["subset"]
        d["stages"].setdefault(
            "retriever order",
            {
                "subset": orders["retriever"],
                # subset x hit-rate like every other row (the report's own overall is the full ranking, exact, but
                # of all subset users rather than the sample the rows share)
                "overall": {key: value * report["hit_rate"] for key, value in orders["retriever"].items()},
                "overall_full_ranking": full_ranking(args.workdir, dataset),
                "first_is_a": report["true_is_first_candidate"],
            },
        )
        for who in sorted(orders, key=lambda who: who != "ranker"):  # the pure ranker, then the fused order
            if who == "retriever":
                continue
            name = stage if who == "ranker" else f"{stage}, {who}"
            d["stages"][name] = {
                "subset": orders[who],
                "overall": report["overall"][who],
                "paired": report["paired_by_order"][who],
                "alpha": report["fusion"]["alpha"] if who != "ranker" else None,
                "first_is_a": report["ranker"]["top_is_first_candidate"] if who == "ranker" else None,
                "time": minutes(seconds),
                "model": args.model,
            }
        save(data)

    model = Path(args.model).name
    evaluate(f"zero-shot {model}", ["--adapter", "none", "--model", args.model], "zero-shot")
    for negatives in args.negatives:  # a ranker per kind, named after it in the work directory
        kind, _, variant = negatives.partition("-")
        name = "trained, validation requests" if kind == "validation" else f"trained, {kind} negatives"
        name += {
            "": "",
            "shuffled": ", shuffled",
            "prior": ", retriever prior",
            "shuffled-wide": ", shuffled, wide LoRA",
        }[variant]
        ranker = negatives  # its directory; a budget or model other than the default is a ranker of its own
        if args.train_examples != DEFAULT_TRAIN_EXAMPLES:
            name += f", {args.train_examples:,} examples"
            ranker += f"-{args.train_examples}"
        if args.model != DEFAULT_MODEL:
            name += f", {model}"
            ranker += f"-{model}"
        done = args.workdir / dataset / "ranker" / ranker / "manifest.json"
        if name not in d["training"] and done.is_file():  # trained, but its entry was lost: keep it, say so
            trained_on = load(done)["config"]["model"]
            if trained_on != args.model:  # two model directories of the same name
                raise SystemExit(f"{done} is a ranker of {trained_on}, not {args.model}: delete it or rename one")
            print(f"{done} exists: using that ranker (delete it to train again)", flush=True)
        if name not in d["training"]:
            state = args.workdir / dataset / "ranker" / f".{ranker}.partial" / "training" / "state.safetensors"
            seconds = (
                0.0
                if done.is_file()
                else run(
                    [
                        *("rank-train", dataset, "--name", ranker, "--model", args.model, "--negatives", kind),
                        *VARIANT_SETTINGS[variant],
                        *("--max-train-examples", str(args.train_examples)),
                        *("--max-val-examples", str(args.val_examples), "--eval-every", str(args.eval_every)),
                        *("--set", f"fusion_val_examples={args.fusion_val_examples}"),
                        *("--batch-size", str(args.batch_size), "--lr", str(args.lr)),
                        *("--warmup-steps", str(args.warmup_steps), "--resume" if state.is_file() else "--restart"),
                    ],
                    env,
                )
            )
            manifest = load(done)
            keep = (
                "train_examples",
                "steps",
                "best_step",
                "val_metrics",
                "val_order",
                "val_retriever_metrics",
                "fusion",
            )
            d["training"][name] = {k: manifest.get(k) for k in keep} | {
                "validations": manifest["validations"],
                "train_seconds": manifest["train_seconds"],
                "dtype": manifest["model"]["dtype"],
                "time": minutes(seconds) if seconds else "earlier run",
                "model": args.model,
            }
            if seconds:  # a ranker found trained keeps its own settings, in its manifest
                d["runs"][name + " (training)"] = this_run
            save(data)
        if "val_order" not in d["training"][name] and done.is_file():  # recorded before val_order was
            d["training"][name]["val_order"] = load(done).get("val_order", "ranker")
            save(data)
        manifest = load(done)  # {} when the ranker's folder is gone (a cleaned /tmp): its results stand as they are
        wanted = min(args.fusion_val_examples, manifest.get("val_subset_users", 0))
        if kind != "validation" and (manifest.get("fusion") or {}).get("users", 0) < wanted:
            # α chosen on fewer validation users than asked (a ranker trained before fusion_val_examples): choose it
            # again on them, and rank the test users again with it
            seconds = run(
                ["tune-fusion", dataset, "--ranker", ranker, "--val-examples", str(args.fusion_val_examples)], env
            )
            fusion = load(done)["fusion"]
            d["training"][name]["fusion"] = fusion
            d["training"][name]["fusion_time"] = minutes(seconds)
            d["runs"][name + " (fusion)"] = this_run
            for stage in [s for s in d["stages"] if s == name or s.startswith(name + ", fused")]:
                del d["stages"][stage]
            save(data)
        evaluate(name, ["--ranker", ranker], ranker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamarec-bench-ranking"))
    parser.add_argument("--retrieval-workdir", type=Path, default=Path("/tmp/llamarec-bench-retrieval"))
    parser.add_argument("--model", default=DEFAULT_MODEL, help="an alias or a local model directory")
    parser.add_argument(
        "--train-examples",
        type=int,
        default=DEFAULT_TRAIN_EXAMPLES,
        help="a budget other than the default trains rankers of their own, named with it (beside the default's)",
    )
    parser.add_argument("--val-examples", type=int, default=200, help="validation users for early stopping")
    parser.add_argument(
        "--fusion-val-examples",
        type=int,
        default=1000,
        help="validation users α is chosen on (all if fewer; rankers that chose α on fewer choose it again)",
    )
    parser.add_argument("--test-examples", type=int, default=1000, help="seeded sample of the test subset")
    parser.add_argument("--eval-every", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup-steps", type=int, default=8)
    parser.add_argument(
        "--negatives",
        nargs="+",
        default=["retrieved", "retrieved-prior", "random"],
        choices=[
            *("retrieved", "retrieved-shuffled", "retrieved-shuffled-wide", "retrieved-prior"),
            *("validation", "validation-prior", "random"),
        ],
        help="retrieved-shuffled: the retriever's candidates in a random order (--set shuffle_candidates=true); "
        "retrieved-shuffled-wide: the same with LoRA rank 16 on every projection; "
        "retrieved-prior: trained on the letters beside the retriever's log-probabilities (--set loss=letters "
        "--set retriever_prior=1); validation: the validation requests not held out (rank-train --negatives "
        "validation)",
    )
    parser.add_argument(
        "--redo",
        action="store_true",
        help="forget this --model's results on the named datasets and rerun them (rankers already trained in the "
        "work directory are reused: delete them to train again)",
    )
    args = parser.parse_args()

    env = os.environ | {"LLAMAREC_WORKDIR": str(args.workdir)}
    data = load(RESULTS / "ranking.json")
    if "datasets" not in data:  # the single-dataset layout of before 2026-12-02: not comparable, start over
        data = {"datasets": {}}
    budget = (
        f"{args.train_examples} training examples, batch {args.batch_size}, lr {args.lr}, warm-up "
        f"{args.warmup_steps}, validation on {args.val_examples} sampled users every {args.eval_every} steps"
    )
    for dataset in args.datasets:
        if args.redo:
            forget(data["datasets"].get(dataset, {}), args.model)
        run_dataset(dataset, data, budget, args, env)
    save(data)
    print((RESULTS / "ranking.md").read_text())


if __name__ == "__main__":
    main()
