"""Benchmark: LRURec's training step in llamarec against the reference code's (Yueeeeeeee/LlamaRec), side by side.

Both train on the same ml-100k training windows, in the same process and thread count, with the same
configuration: batch 16, max length 200, hidden 64, 2 blocks, dropout 0.2 everywhere (the reference's
bert_dropout and bert_attn_dropout), the full softmax over all items, AdamW (lr 1e-3, weight decay 0.01, none on
biases and norms), gradient clipping at norm 5. Each batch is padded as each code pads it (the reference to max
length 200 and then to 256 for its scan; llamarec to the batch's longest window).

First it checks that the two compute the same function: the reference model's weights are copied into
llamarec's LRURec (complex linear maps as their real and imaginary halves) and, with dropout off, the two losses
and every gradient must agree. Then it times interleaved rounds (llamarec then the reference, then the other way
round) and reports each one's median steps/s and the median of the per-pair ratios, so that drifts in the
machine's speed hit both alike. Results go to ``benchmarks/results/retrieval-step.{json,md}``.

Run (from the repository root; the reference needs only torch and numpy)::

    git clone https://github.com/Yueeeeeeee/LlamaRec /tmp/LlamaRec
    .venv/bin/python benchmarks/retrieval_step.py --reference /tmp/LlamaRec
    .venv/bin/python benchmarks/retrieval_step.py --reference /tmp/LlamaRec --profile   # where llamarec's step goes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from retrieval import RESULTS, preprocess  # noqa: E402

from llamarec_cli.data.artifact import load_dataset  # noqa: E402
from llamarec_cli.retrieval.data import pad_left, training_windows  # noqa: E402
from llamarec_cli.retrieval.lru import LRURec, LRURecConfig  # noqa: E402
from llamarec_cli.retrieval.train import Objective, loss_and_gradients, make_optimizer  # noqa: E402

BATCH, MAX_LEN, HIDDEN, BLOCKS = 16, 200, 64, 2


def reference_module(path: Path):
    """The reference's model/lru.py, loaded from its checkout."""
    source = path / "model" / "lru.py"
    if not source.is_file():
        sys.exit(f"{source} not found: --reference is a checkout of https://github.com/Yueeeeeeee/LlamaRec")
    spec = importlib.util.spec_from_file_location("reference_lru", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_model(module, num_items: int, dropout: float):
    args = SimpleNamespace(
        num_items=num_items,
        bert_hidden_units=HIDDEN,
        bert_num_blocks=BLOCKS,
        bert_dropout=dropout,
        bert_attn_dropout=dropout,
    )
    return module.LRURec(args)


def reference_optimizer(model) -> torch.optim.AdamW:
    """As the reference's trainer/base.py builds it (adam_epsilon 1e-9 in its config.py)."""
    named = list(model.named_parameters())
    no_decay = ("bias", "layer_norm")
    groups = [
        {"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=1e-3, eps=1e-9)


def reference_batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference dataset's (tokens, labels), both left-padded to the max length, from llamarec's windows."""
    return pad_left([w[:-1] for w in rows], MAX_LEN), pad_left([w[1:] for w in rows], MAX_LEN)


def reference_loss(model, tokens, labels) -> torch.Tensor:
    logits = model(tokens)  # as its trainer/lru.py: cross-entropy over all items, padding labels ignored
    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), ignore_index=0)


def ours_model(num_items: int, dropout: float) -> LRURec:
    config = LRURecConfig(hidden=HIDDEN, blocks=BLOCKS, dropout=dropout, max_len=MAX_LEN, batch_size=BATCH)
    return LRURec(config, num_items).train()


def as_ours(theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors named and laid out as the reference's LRURec parameters (weights or gradients) in llamarec's names and
    layout: the complex B = B_r + i B_i as [B_r; B_i], Re(C h + c) as [C_r, -C_i] and c_r."""
    ours = {}
    for name, value in theirs.items():
        name = name.replace("embedding.token.", "embedding.").replace("embedding.layer_norm", "embedding_layer_norm")
        name = name.replace("model.lru_blocks.", "blocks.").replace(".lru_layer.", ".lru.")
        name = "item_bias" if name == "model.bias" else name
        if ".in_proj." in name:
            value = torch.cat([value.real, value.imag])
        elif name.endswith("out_proj.weight"):
            value = torch.cat([value.real, -value.imag], dim=1)
        elif name.endswith("out_proj.bias"):
            value = value.real
        ours[name] = value
    return ours


def check_same_maths(module, num_items: int, rows: list[list[int]]) -> dict:
    """Loss and every gradient of both codes from the same weights, dropout off: the largest relative differences.
    Exits if they differ by more than float32 rounding."""
    torch.manual_seed(0)
    ref, ours = reference_model(module, num_items, 0.0), ours_model(num_items, 0.0)
    ours.load_state_dict(as_ours(ref.state_dict()))
    ref_loss = reference_loss(ref, *reference_batch(rows))
    our_loss = Objective(ours, rows)(pad_left(rows))
    ref_loss.backward()
    our_loss.backward()
    theirs = as_ours({name: param.grad for name, param in ref.named_parameters()})
    differences = {
        name: ((param.grad - theirs[name]).norm() / theirs[name].norm()).item()
        for name, param in ours.named_parameters()
    }
    check = {
        "loss_reference": ref_loss.item(),
        "loss_llamarec": our_loss.item(),
        "loss_relative_difference": abs(ref_loss.item() - our_loss.item()) / abs(ref_loss.item()),
        "gradient_relative_difference": max(differences.values()),  # max over all tensors of |g - g_ref| / |g_ref|
        "gradients_compared": len(differences),
    }
    if check["loss_relative_difference"] > 1e-5 or check["gradient_relative_difference"] > 1e-4:
        sys.exit(f"The two codes do not compute the same function: {json.dumps(check)}, per tensor {differences}")
    return check


def timers(module, num_items: int, windows: list[list[int]], dropout: float, seed: int = 0):
    """A step function for each code: (batch index) -> one optimizer step on that batch."""
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed)).tolist()

    def rows(i: int) -> list[list[int]]:
        return [windows[order[(i * BATCH + j) % len(windows)]] for j in range(BATCH)]

    torch.manual_seed(seed)
    ours = ours_model(num_items, dropout)
    objective, our_opt = Objective(ours, windows), make_optimizer(ours, ours.config, torch.device("cpu"))
    ref = reference_model(module, num_items, dropout).train()
    ref_opt = reference_optimizer(ref)

    def our_step(i: int) -> None:  # as llamarec_cli/retrieval/train.py's train_step
        loss_and_gradients(objective, ours, our_opt, pad_left(rows(i))).item()
        our_opt.step()

    def ref_step(i: int) -> None:  # as the reference's trainer/base.py
        ref_opt.zero_grad()
        loss = reference_loss(ref, *reference_batch(rows(i)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 5.0)  # its max_grad_norm
        ref_opt.step()
        loss.item()

    return {"llamarec": our_step, "reference": ref_step}


def timed(step, first: int, count: int) -> float:
    began = time.perf_counter()
    for i in range(first, first + count):
        step(i)
    return count / (time.perf_counter() - began)


def rounds(rates: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in rates)


def markdown(result: dict) -> str:
    check, runs = result["same_maths"], result["steps_per_second"]
    return "\n".join(
        [
            "# LRURec training step: llamarec against the reference code",
            "",
            f"Command: `{result['command']}` ({result['date']}, {result['threads']} threads, {result['cpu']}).",
            "",
            f"ml-100k, batch {BATCH}, max length {MAX_LEN}, hidden {HIDDEN}, {BLOCKS} blocks, dropout "
            f"{result['dropout']}, full softmax, AdamW, clipping at 5; {result['pairs']} interleaved pairs of rounds "
            f"of {result['steps']} steps after {result['warmup']} warm-up steps each.",
            "",
            "| code | median steps/s | rounds |",
            "|---|---|---|",
            *(f"| {name} | {statistics.median(r):.2f} | {rounds(r)} |" for name, r in runs.items()),
            "",
            f"**llamarec / reference: {result['ratio_median']:.2f}x** (median of the per-pair ratios; "
            f"range {min(result['ratios']):.2f}-{max(result['ratios']):.2f}).",
            "",
            "Same maths, checked before timing (the reference's weights copied into llamarec's LRURec, dropout off, "
            f"one batch): loss {check['loss_reference']:.6f} (reference) against {check['loss_llamarec']:.6f}, "
            f"relative difference {check['loss_relative_difference']:.1e}; the largest relative difference of the "
            f"gradients of all {check['gradients_compared']} parameter tensors "
            f"{check['gradient_relative_difference']:.1e}.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of Yueeeeeeee/LlamaRec")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamarec-bench-retrieval"))
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="steps per timed round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="print where llamarec's step goes and stop")
    parser.add_argument("--no-write", action="store_true", help="print, do not write benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module = reference_module(args.reference)
    preprocess("ml-100k", args.workdir)
    dataset = load_dataset(args.workdir, "ml-100k")
    windows = training_windows(list(dataset.sequences("train").values()), MAX_LEN)
    steps = timers(module, dataset.num_items, windows, args.dropout)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        timed(steps["llamarec"], 0, args.warmup)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed(steps["llamarec"], args.warmup, args.steps)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return
    check = check_same_maths(module, dataset.num_items, windows[:BATCH])
    print(json.dumps(check), flush=True)
    runs = {"llamarec": [], "reference": []}
    for step in steps.values():
        timed(step, 0, args.warmup)
    for pair in range(args.pairs):
        first = args.warmup + pair * args.steps
        for name in ("llamarec", "reference") if pair % 2 == 0 else ("reference", "llamarec"):
            runs[name].append(timed(steps[name], first, args.steps))
        print(f"pair {pair}: " + ", ".join(f"{n} {r[-1]:.2f} steps/s" for n, r in runs.items()), flush=True)
    ratios = [a / b for a, b in zip(runs["llamarec"], runs["reference"], strict=True)]
    result = {
        "command": "python benchmarks/retrieval_step.py " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dropout": args.dropout,
        "pairs": args.pairs,
        "steps": args.steps,
        "warmup": args.warmup,
        "same_maths": check,
        "steps_per_second": runs,
        "ratios": ratios,
        "ratio_median": statistics.median(ratios),
    }
    print(markdown(result))
    if not args.no_write:
        (RESULTS / "retrieval-step.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "retrieval-step.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
