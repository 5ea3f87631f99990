"""Benchmark: bf16 CPU scoring with SDPA's fused attention kernel against llamarec's blockwise attention.

The same SmolLM2 model, the same ml-100k requests (titles rewritten to about N tokens, as in efficiency.py), one
request a pass: the verbalizer's time with each attention, alternated round by round (medians), next to the
arithmetic floor of efficiency.py. Then the trained ranker on real prompts (validation then test subset users)
scored three ways, bf16 with each attention and fp32: same top letter and rank correlation against fp32, and
NDCG@10 with the blocks minus with SDPA, paired. Also what the CPU probe (llamarec_cli/precision.py) measured, which
decides whether ``--dtype auto``'s bf16 uses the blocks on this machine.

Writes ``benchmarks/results/attention.{json,md}``. Needs a workdir with ml-100k candidates and a trained ranker
(``llamarec pipeline -w DIR``):

    .venv/bin/python benchmarks/attention.py --workdir /tmp/llamarec-bench-memory/pipeline
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # efficiency.py beside this file
from efficiency import RESULTS, forward_flops, matmul_rate, requests, titles_of_length  # noqa: E402


def timings(model, tokenizer, titles, examples, lengths, rounds: int) -> list[dict]:
    from llamarec_cli.ranking import attention
    from llamarec_cli.ranking.prompts import PromptEncoder
    from llamarec_cli.ranking.scoring import score_examples
    from llamarec_cli.ranking.templates import load_template

    implementations = {"sdpa": "sdpa", "blocks": attention.register()}
    rows = []
    for n in lengths:
        encoder = PromptEncoder(tokenizer, load_template(), titles_of_length(titles, n, tokenizer))
        times = {kind: [] for kind in implementations}
        for _ in range(rounds):
            for kind, name in implementations.items():
                model.set_attn_implementation(name)
                for e in examples:
                    began = time.perf_counter()
                    score_examples(model, encoder, [e], batch_size=1)
                    times[kind].append(time.perf_counter() - began)
        tokens = round(statistics.mean(len(encoder.prompt_ids(e)) for e in examples))
        rate = matmul_rate("cpu", torch.bfloat16, tokens, model.config.hidden_size, model.config.intermediate_size, 20)
        row = {"title_tokens": n, "prompt_tokens": tokens, "floor_s": forward_flops(model.config, tokens) / rate}
        row |= {f"{kind}_s": statistics.median(t) for kind, t in times.items()}
        rows.append(row)
        print(f"{n}-token titles: SDPA {row['sdpa_s']:.3f} s, blocks {row['blocks_s']:.3f} s", flush=True)
    model.set_attn_implementation("sdpa")
    return rows


def agreement_on_real_prompts(workdir: Path, ranker: str, count: int) -> dict:
    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.evaluation.metrics import paired_difference
    from llamarec_cli.ranking import attention
    from llamarec_cli.ranking.examples import valid_subset
    from llamarec_cli.ranking.scoring import agreement, score_examples
    from llamarec_cli.stages.candidates import load_candidates
    from llamarec_cli.stages.evaluate import load_ranker
    from llamarec_cli.stages.rank_train import subset_metrics, target_ranks

    dataset = load_dataset(workdir, "ml-100k")
    frame, _ = load_candidates(workdir, dataset)
    examples = (valid_subset(dataset, frame, "val").examples + valid_subset(dataset, frame, "test").examples)[:count]
    scores, seconds = {}, {}
    fp32 = load_ranker(dataset, workdir, ranker=ranker, dtype="fp32", device="cpu")
    began = time.perf_counter()
    scores["fp32"] = score_examples(fp32.model, fp32.encoder, examples)
    seconds["fp32"] = time.perf_counter() - began
    del fp32
    bf16 = load_ranker(dataset, workdir, ranker=ranker, dtype="bf16", device="cpu")
    for kind, name in (("sdpa", "sdpa"), ("blocks", attention.register())):
        bf16.model.set_attn_implementation(name)
        began = time.perf_counter()
        scores[kind] = score_examples(bf16.model, bf16.encoder, examples)
        seconds[kind] = time.perf_counter() - began
        print(f"{kind}: {len(examples)} prompts in {seconds[kind]:.0f} s", flush=True)
    ranks = {kind: target_ranks(examples, s) for kind, s in scores.items()}
    return {
        "ranker": ranker,
        "prompts": len(examples),
        "seconds": seconds,
        "against_fp32": {kind: agreement(scores["fp32"], scores[kind]) for kind in ("sdpa", "blocks")},
        "ndcg10": {kind: subset_metrics(r)["NDCG@10"] for kind, r in ranks.items()},
        "blocks_minus_sdpa": paired_difference(ranks["blocks"], ranks["sdpa"]),
    }


def markdown(data: dict) -> str:
    probe, a = data["probe"], data["agreement"]
    lines = [
        "# bf16 attention on the CPU: SDPA's fused kernel against llamarec's blocks",
        "",
        f"`{data['command']}` ({data['date']}, {data['machine']}). smollm2-135m in bf16, one request a pass, the two "
        f"attentions alternated over {data['rounds']} rounds of {data['requests']} ml-100k test requests (medians); "
        "floor: efficiency.py's (the multiplies at the bf16 rate measured on the model's MLP shape).",
        "",
        "| title tokens | prompt tokens | SDPA | blocks | SDPA / blocks | floor | blocks / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["timings"]:
        lines.append(
            f"| {r['title_tokens']} | {r['prompt_tokens']} | {r['sdpa_s']:.3f} s | {r['blocks_s']:.3f} s | "
            f"{r['sdpa_s'] / r['blocks_s']:.2f}x | {r['floor_s']:.3f} s | {r['blocks_s'] / r['floor_s']:.2f}x |"
        )
    chosen = "uses the blocks" if probe["blocks_chosen"] else "keeps SDPA"
    lines += [
        "",
        f"The CPU probe on this machine: one causal attention over 1,024 tokens {probe['attention_sdpa_ms']:.1f} ms "
        f"with SDPA, {probe['attention_blocks_ms']:.1f} ms in blocks: `--dtype auto`'s bf16 {chosen} here.",
        "",
        f"The trained ranker '{a['ranker']}' on {a['prompts']} real prompts (ml-100k validation then test subset "
        "users), each bf16 attention against fp32:",
        "",
        "| attention | same top letter as fp32 | Spearman, mean (lowest) | NDCG@10 | scoring time |",
        "|---|---|---|---|---|",
    ]
    for kind in ("sdpa", "blocks"):
        g = a["against_fp32"][kind]
        lines.append(
            f"| {kind} (bf16) | {g['same_top1']} of {g['requests']} | {g['spearman_mean']:.4f} "
            f"({g['spearman_min']:.4f}) | {a['ndcg10'][kind]:.4f} | {a['seconds'][kind]:.0f} s |"
        )
    p = a["blocks_minus_sdpa"]
    lines += [
        f"| fp32 | | | {a['ndcg10']['fp32']:.4f} | {a['seconds']['fp32']:.0f} s |",
        "",
        f"NDCG@10 with the blocks minus with SDPA, paired: {p['difference']:+.4f} ± {p['half_width']:.4f} (95%).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamarec-bench-memory/pipeline"))
    parser.add_argument("--ranker", default="default")
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 20, 30], help="title lengths in tokens")
    parser.add_argument("--requests", type=int, default=3, help="requests timed per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--agreement-prompts", type=int, default=200)
    args = parser.parse_args()

    from llamarec_cli.precision import cpu_model, matrix_features
    from llamarec_cli.ranking import attention
    from llamarec_cli.ranking.models import load_model

    dataset, examples = requests(args.workdir, args.requests)
    loaded = load_model("smollm2-135m", device="cpu", dtype="bf16")
    data = {
        "command": "python benchmarks/attention.py " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{cpu_model()} [{' '.join(matrix_features())}], torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "rounds": args.rounds,
        "requests": args.requests,
        "probe": {k: v for k, v in attention.probed_times().items() if k != "file"}
        | {"blocks_chosen": attention.pays_here()},
        "timings": timings(loaded.model, loaded.tokenizer, dataset.titles, examples, args.lengths, args.rounds),
        "agreement": agreement_on_real_prompts(args.workdir, args.ranker, args.agreement_prompts),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "attention.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "attention.md").write_text(markdown(data))
    print((RESULTS / "attention.md").read_text())


if __name__ == "__main__":
    main()
