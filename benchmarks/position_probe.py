"""Probe: does a trained ranker read the titles, or only the position of the letters?

A ranker trained on the retriever's candidates in the retriever's order can learn "A is usually right" and little
else; then fusing it with the retriever adds nothing. This probe scores validation users (never test users) with the
candidates shown in the retriever's order and in ``--orders - 1`` seeded random orders, maps each order's letter
log-probabilities back to the candidates, and reports NDCG@10 for the retriever's order, each scoring alone, the
average of the shuffled orders (the titles' signal, the position's averaged out) and the average of all, each with
the α that fusion with the retriever would choose on these users. A ranker whose shuffled-order NDCG@10 is near the
random order's (0.227 for 20 candidates) has learned the position, not the titles.

Writes ``benchmarks/results/position-probe.{json,md}`` (one entry per dataset and ranker, kept across runs).

    .venv/bin/python benchmarks/position_probe.py --dataset games --ranker retrieved --users 500 --orders 4
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llamarec_cli.data.artifact import load_dataset
from llamarec_cli.ranking.examples import valid_subset
from llamarec_cli.ranking.fusion import choose_alpha
from llamarec_cli.ranking.models import DEFAULT_MODEL
from llamarec_cli.stages.candidates import load_candidates
from llamarec_cli.stages.evaluate import load_ranker
from llamarec_cli.stages.rank_train import sample, score_subset

RESULTS = Path(__file__).resolve().parent / "results"


def shown_in(example, permutation):
    """The example with its candidates shown in ``permutation`` (of the retriever's order)."""
    shown = copy.copy(example)
    shown.candidates = [example.candidates[i] for i in permutation]
    shown.target_index = int(np.flatnonzero(permutation == example.target_index)[0])
    return shown


def probe(
    workdir: Path, dataset_name: str, ranker: str, users: int, orders: int, seed: int, model: str | None = None
) -> dict:
    dataset = load_dataset(workdir, dataset_name)
    frame, _ = load_candidates(workdir, dataset)
    examples = sample(valid_subset(dataset, frame, "val").examples, users, seed)
    if ranker == "zero-shot":  # the model as it comes, no adapter: does it know the titles before training?
        model = model or DEFAULT_MODEL
        loaded = load_ranker(dataset, workdir, adapter="none", model=model)
    elif model:
        raise SystemExit("--model is for --ranker zero-shot: a trained ranker is probed with its own model")
    else:
        loaded = load_ranker(dataset, workdir, ranker=ranker)
    rng = np.random.default_rng(seed)
    views, seconds = [], []  # per order: each example's letter log-probabilities, in the retriever's candidate order
    for view in range(orders):
        perms = [np.arange(len(e.candidates)) if view == 0 else rng.permutation(len(e.candidates)) for e in examples]
        began = time.perf_counter()
        scores = score_subset(loaded.model, loaded.encoder, [shown_in(e, p) for e, p in zip(examples, perms)], 8)
        seconds.append(time.perf_counter() - began)
        back = []
        for s, p in zip(scores, perms):
            out = torch.empty(len(p), dtype=torch.float64)
            out[torch.as_tensor(p)] = torch.log_softmax(s.double(), -1)
            back.append(out)
        views.append(back)
        print(f"order {view + 1} of {orders}: {seconds[-1]:.0f} s", flush=True)

    def summary(chosen: dict) -> dict:
        return {"alone": chosen["val"]["1"], "alpha": chosen["alpha"], "fused": chosen["val"][f"{chosen['alpha']:g}"]}

    def mean(which: range) -> list[torch.Tensor]:
        return [torch.stack([views[j][i] for j in which]).mean(0) for i in range(len(examples))]

    shown = choose_alpha(examples, views[0])  # its curve at α = 0 is the retriever's order
    rows = {"retriever's order shown": summary(shown)}
    if orders > 1:
        rows |= {
            f"{orders - 1} shuffled order{'s' if orders > 2 else ''}, averaged": summary(
                choose_alpha(examples, mean(range(1, orders)))
            ),
            f"all {orders} orders, averaged": summary(choose_alpha(examples, mean(range(orders)))),
        }
    return {
        "dataset": dataset_name,
        "ranker": ranker,
        "model": model or "",
        "users": len(examples),
        "retriever_ndcg": shown["val"]["0"],
        "rows": rows,
        "seconds_per_order": round(float(np.median(seconds)), 1),
        "command": "python benchmarks/position_probe.py " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def markdown(entries: dict) -> str:
    lines = [
        "# Position probe: does the ranker read the titles? (validation users only)",
        "",
        "Written by `benchmarks/position_probe.py`. NDCG@10 on a seeded sample of validation users whose true item",
        "is among the 20 candidates, the ranker's letters read with the candidates shown in the retriever's order or",
        "in seeded random orders (log-probabilities mapped back to the candidates and averaged). A random order scores",
        "about 0.227. *Fused*: with the retriever's scores, at the α best on these same users (an upper bound).",
        "",
    ]
    for _, entry in sorted(entries.items()):
        lines += [
            f"## {entry['dataset']}, ranker `{entry['ranker']}`"
            + (f", model `{Path(entry['model']).name}`" if entry.get("model") else ""),
            "",
            f"`{entry['command']}` ({entry['date']}, {entry['machine']}); {entry['users']:,} validation users, "
            f"{entry['seconds_per_order']} s per order",
            "",
            "| candidates shown | ranker alone | best α | fused at it | retriever's order |",
            "|---|---|---|---|---|",
        ]
        for name, row in sorted(entry["rows"].items(), key=lambda kv: not kv[0].startswith("retriever")):
            lines.append(
                f"| {name} | {row['alone']:.4f} | {row['alpha']:g} | {row['fused']:.4f} | "
                f"{entry['retriever_ndcg']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamarec-bench-ranking"))
    parser.add_argument("--dataset", default="games")
    parser.add_argument("--ranker", default="retrieved", help="a trained ranker's name, or zero-shot")
    parser.add_argument("--model", help="with --ranker zero-shot: the model (default: llamarec's default)")
    parser.add_argument("--users", type=int, default=500, help="seeded sample of validation users")
    parser.add_argument("--orders", type=int, default=4, help="the retriever's order plus this many less one shuffled")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    entry = probe(args.workdir, args.dataset, args.ranker, args.users, args.orders, args.seed, args.model)
    path = RESULTS / "position-probe.json"
    entries = json.loads(path.read_text()) if path.is_file() else {}
    model = f"/{Path(entry['model']).name}" if args.ranker == "zero-shot" else ""
    entries[f"{args.dataset}/{args.ranker}{model}"] = entry
    path.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    (RESULTS / "position-probe.md").write_text(markdown(entries))
    print(markdown({"this": entry}))


if __name__ == "__main__":
    main()
