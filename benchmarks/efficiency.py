"""Benchmark: how fast the verbalizer ranks, against generating the ranked list (the paper's Figure 3).

On the same model and the same requests (ml-100k test users: their history and LRURec's 20 candidates), with every
title rewritten to about N tokens for N in 5, 10, 15, 20, 30:

- verbalizer: one forward pass, the candidates' letter logits (what llamarec does);
- generation: greedy decoding of the ranked list of titles, stopped at the combined titles' length (what a
  generative ranker must do to name 20 titles).

Both run in the same dtype (``--dtype``, default auto: bf16 on a CPU that multiplies it fast), generation with the
KV cache. Each verbalizer time stands next to its arithmetic floor: the forward pass's multiply FLOPs (every linear
layer over every prompt token, causal attention, the LM head for the last position) at the matrix-multiply rate
measured in that dtype on the model's MLP shape at that prompt length.

Also, with the real titles: requests per second at batch 1, 8 and 32 (as llamarec batches, and in one forward pass
per batch as before 2026-12-02); the p50 / p95 end-to-end latency of one ``serve-shell`` request (retrieval over all
items plus ranking); bf16 against fp32 on the same trained ranker over 200 real prompts (same top letter,
rank correlation of the letter logits, paired NDCG@10); and a short ``rank-train`` in each dtype on the same
examples (loss curves, validation NDCG@10, examples per second). With a CUDA GPU, the verbalizer/generation
comparison runs on a Llama-2-7B-shaped model with random weights (timing does not depend on the weights).

Writes ``benchmarks/results/efficiency.json``, ``efficiency.md`` and ``efficiency.png``. Needs a workdir with
ml-100k candidates and a trained ranker (``llamarec pipeline -w DIR`` or ``benchmarks/memory.py`` makes one). The plot
needs matplotlib (``pip install -e ".[bench]"``).

    .venv/bin/python benchmarks/efficiency.py --workdir /tmp/llamarec-bench-memory/pipeline --ranker default
    .venv/bin/python benchmarks/efficiency.py --requests 5 --generation-requests 3
    .venv/bin/python benchmarks/efficiency.py --resume      # keep the stages already measured
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LLAMAREC_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"
LENGTHS = (5, 10, 15, 20, 30)
GENERATION_INSTRUCTION = (
    "Given user history in chronological order, rank all items of the candidate pool from most to least likely to "
    "be chosen next. Answer with their titles, one per line."
)


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return times


def matmul_rate(device: str, dtype: torch.dtype, m: int, k: int, n: int, repeats: int, rounds: int = 5) -> float:
    """FLOP/s of an (m x k) @ (k x n) multiply, the best of ``rounds``: the rate the arithmetic floor assumes."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    best = 0.0
    for _ in range(rounds):
        sync()
        began = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync()
        best = max(best, repeats * 2 * m * k * n / (time.perf_counter() - began))
    return best


def forward_flops(config, tokens: int) -> float:
    """FLOPs of the multiplies in one forward pass that reads the last position's logits: every linear layer of
    every block over all ``tokens``, causal attention (QK^T and AV over the lower triangle) and the LM head for one
    position. Element-wise work (norms, rotary, SiLU) is not counted: the floor is what the multiplies alone cost."""
    hidden, layers, heads = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    per_token = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + 3 * hidden * config.intermediate_size
    linear = 2 * layers * per_token * tokens
    attention = 2 * layers * heads * head_dim * tokens * tokens
    return linear + attention + 2 * hidden * config.vocab_size


def with_floor(rows: list[dict], config, rate) -> list[dict]:
    """Each row with its arithmetic floor (``forward_flops`` at ``rate(tokens)`` FLOP/s) and per-token costs."""
    for row in rows:
        tokens = row["prompt_tokens"]
        row["matmul_gflops"] = row.get("matmul_gflops") or rate(tokens) / 1e9
        row["floor_s"] = forward_flops(config, tokens) / (row["matmul_gflops"] * 1e9)
        row["over_floor"] = row["verbalizer_s"] / row["floor_s"]
        row["prefill_ms_per_token"] = 1000 * row["verbalizer_s"] / tokens
        row["decode_ms_per_token"] = 1000 * (row["generation_s"] - row["verbalizer_s"]) / row["generated_tokens"]
    return rows


def titles_of_length(titles: dict[int, str], n: int, tokenizer) -> dict[int, str]:
    """Each title made about ``n`` tokens long: cut, or extended with the following titles' words."""
    from llamarec_cli.ranking.verbalizer import encode

    items = list(titles)
    out = {}
    for position, item in enumerate(items):
        ids = encode(tokenizer, titles[item])
        step = 1
        while len(ids) < n:
            ids += encode(tokenizer, " " + titles[items[(position + step) % len(items)]])
            step += 1
        out[item] = tokenizer.decode(ids[:n]).strip()
    return out


def requests(workdir: Path, count: int):
    """(dataset, examples): the first ``count`` test users of the valid retrieval subset."""
    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.ranking.examples import valid_subset
    from llamarec_cli.stages.candidates import load_candidates

    dataset = load_dataset(workdir, "ml-100k")
    frame, _ = load_candidates(workdir, dataset)
    return dataset, valid_subset(dataset, frame, "test").examples[:count]


def compare(model, tokenizer, titles, examples, lengths, repeats: int, generation_repeats: int) -> list[dict]:
    from llamarec_cli.ranking.prompts import PromptEncoder
    from llamarec_cli.ranking.scoring import score_examples
    from llamarec_cli.ranking.templates import load_template
    from llamarec_cli.ranking.verbalizer import encode

    template = load_template()
    rows = []
    for n in lengths:
        short = titles_of_length(titles, n, tokenizer)
        encoder = PromptEncoder(tokenizer, template, short)
        generator = PromptEncoder(tokenizer, replace(template, instruction=GENERATION_INSTRUCTION), short)
        example = examples[0]
        mean_tokens = statistics.mean(len(encode(tokenizer, short[i])) for i in example.candidates)
        answer_tokens = sum(len(encode(tokenizer, short[i] + "\n")) for i in example.candidates)
        verbalizer = []
        for e in examples[:repeats]:
            verbalizer += timed(lambda e=e, enc=encoder: score_examples(model, enc, [e], batch_size=1), 1)
        generation = []
        for e in examples[:generation_repeats]:
            ids = torch.tensor([generator.prompt_ids(e)], device=model.device)

            def generate(ids=ids, length=answer_tokens):
                with torch.no_grad():
                    model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=length,
                        min_new_tokens=length,
                        do_sample=False,
                        use_cache=True,  # the KV cache: each new token costs one position, not the whole text
                        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                    )

            generation += timed(generate, 1)
        row = {
            "title_tokens": n,
            "mean_candidate_title_tokens": round(mean_tokens, 1),
            "prompt_tokens": len(encoder.prompt_ids(example)),
            "generated_tokens": answer_tokens,
            "verbalizer_s": statistics.median(verbalizer),
            "generation_s": statistics.median(generation),
            "verbalizer_runs": [round(t, 3) for t in verbalizer],
            "generation_runs": [round(t, 2) for t in generation],
        }
        row["speedup"] = row["generation_s"] / row["verbalizer_s"]
        print(
            f"title ~{n} tokens: prompt {row['prompt_tokens']}, verbalizer {row['verbalizer_s']:.2f} s, "
            f"generation of {answer_tokens} tokens {row['generation_s']:.1f} s, x{row['speedup']:.1f}",
            flush=True,
        )
        rows.append(row)
    return rows


def throughput(model, encoder, examples, batch_sizes, rounds: int = 3) -> dict:
    """Requests per second over the same requests at each batch size, as llamarec scores them (passes cut at the
    CPU token cap) and in one forward pass per batch (before 2026-12-02); rounds interleaved, medians."""
    from llamarec_cli.ranking.scoring import score_examples

    settings = [(str(b), b, None) for b in batch_sizes]
    settings += [(f"{b}, one pass", b, 10**9) for b in batch_sizes if b > 1]
    times: dict[str, list[float]] = {name: [] for name, _, _ in settings}
    score_examples(model, encoder, examples[:1], batch_size=1)  # warm-up
    for _ in range(rounds):
        for name, b, cap in settings:
            began = time.perf_counter()
            score_examples(model, encoder, examples, batch_size=b, tokens_per_pass=cap)
            times[name].append(time.perf_counter() - began)
    out = {}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        out[name] = {"requests": len(examples), "seconds": median, "requests_per_second": len(examples) / median}
        print(f"batch {name}: {len(examples) / median:.2f} requests/s", flush=True)
    return out


def profile_forward(model, encoder, example) -> dict:
    """Where one verbalizer forward pass spends its time (torch's profiler, self CPU time): matrix multiplies, the
    attention kernel, and the rest (norms, rotary embedding, SiLU, residual adds, copies), in milliseconds."""
    from torch.profiler import ProfilerActivity, profile

    from llamarec_cli.ranking.scoring import score_examples

    score_examples(model, encoder, [example], batch_size=1)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        score_examples(model, encoder, [example], batch_size=1)
    shares = {"matrix multiplies": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if event.key in ("aten::mm", "aten::addmm", "aten::bmm"):
            shares["matrix multiplies"] += event.self_cpu_time_total
        elif "scaled_dot_product" in event.key:
            shares["attention"] += event.self_cpu_time_total
        else:
            shares["other"] += event.self_cpu_time_total
    result = {name: us / 1000 for name, us in shares.items()}
    result["prompt_tokens"] = len(encoder.prompt_ids(example))
    print(f"profile: {result}", flush=True)
    return result


def dtype_agreement(workdir: Path, ranker: str, count: int) -> dict:
    """The same trained ranker in fp32 and in bf16 on ``count`` real prompts (validation then test subset users):
    same top letter, rank correlation of the letter logits, and NDCG@10 bf16 minus fp32, paired."""
    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.evaluation.metrics import paired_difference
    from llamarec_cli.ranking.examples import valid_subset
    from llamarec_cli.ranking.scoring import agreement, score_examples
    from llamarec_cli.stages.candidates import load_candidates
    from llamarec_cli.stages.evaluate import load_ranker
    from llamarec_cli.stages.rank_train import subset_metrics, target_ranks

    dataset = load_dataset(workdir, "ml-100k")
    frame, _ = load_candidates(workdir, dataset)
    examples = (valid_subset(dataset, frame, "val").examples + valid_subset(dataset, frame, "test").examples)[:count]
    scores, seconds = {}, {}
    for dtype in ("fp32", "bf16"):
        loaded = load_ranker(dataset, workdir, ranker=ranker, dtype=dtype, device="cpu")
        began = time.perf_counter()
        scores[dtype] = score_examples(loaded.model, loaded.encoder, examples)
        seconds[dtype] = time.perf_counter() - began
        print(f"{dtype}: {len(examples)} prompts in {seconds[dtype]:.0f} s", flush=True)
    ranks = {d: target_ranks(examples, scores[d]) for d in scores}
    result = agreement(scores["fp32"], scores["bf16"]) | {
        "ranker": ranker,
        "seconds": seconds,
        "ndcg10": {d: subset_metrics(r)["NDCG@10"] for d, r in ranks.items()},
        "paired": paired_difference(ranks["bf16"], ranks["fp32"]),
    }
    print(f"bf16 vs fp32: same top letter {result['same_top1']}/{result['requests']}", flush=True)
    return result


class LossCurve:
    """A rank-train Reporter that keeps every step's loss."""

    def __init__(self):
        self.losses: list[float] = []

    def epoch(self, *args): ...

    def step(self, loss: float) -> None:
        self.losses.append(loss)

    def validated(self, *args): ...

    def note(self, message: str) -> None: ...

    def close(self): ...


def train_in_each_dtype(workdir: Path, examples: int, val_examples: int) -> dict:
    """A short rank-train in fp32 and in bf16 on the same sampled examples and validation users."""
    from llamarec_cli.ranking.config import RankerConfig
    from llamarec_cli.stages.rank_train import train_ranker

    out = {}
    for dtype in ("fp32", "bf16"):
        config = RankerConfig(
            model="smollm2-135m",
            dtype=dtype,
            negatives="retrieved",
            max_train_examples=examples,
            max_val_examples=val_examples,
            batch_size=4,
            eval_every=4,
            lr=5e-4,
            warmup_steps=4,
            patience=100,
        )
        curve = LossCurve()
        manifest = train_ranker(
            "ml-100k", workdir=workdir, config=config, name=f"bench-{dtype}", device="cpu", restart=True, reporter=curve
        )
        out[dtype] = {
            "train_examples": manifest["train_examples"],
            "steps": manifest["steps"],
            "train_seconds": manifest["train_seconds"],
            "examples_per_second": manifest["steps"] * config.batch_size / manifest["train_seconds"],
            "losses": [round(x, 4) for x in curve.losses],
            "validations": [{"step": v["step"], "NDCG@10": v["NDCG@10"]} for v in manifest["validations"]],
            "best_val_ndcg10": manifest["val_metrics"]["NDCG@10"],
            "val_retriever_ndcg10": manifest["val_retriever_metrics"]["NDCG@10"],
        }
        print(f"rank-train {dtype}: {out[dtype]['examples_per_second']:.2f} examples/s", flush=True)
    return out


def int8_trial(model, encoder, examples) -> dict:
    """Dynamic int8 quantisation (per-channel weights, every linear layer but the LM head): how much faster, and
    whether it keeps the ranker's order. The verbalizer compares 20 logits that can lie close together."""
    import copy
    import warnings

    from llamarec_cli.ranking.scoring import score_examples

    model = copy.deepcopy(model).float()  # dynamic int8 quantises an fp32 model
    layers = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), dict.fromkeys(layers, qconfig))
    out = {}
    for name, m in (("float32", model), ("int8", quantized)):
        times, scores = [], []
        for e in examples:
            began = time.perf_counter()
            scores += score_examples(m, encoder, [e], batch_size=1)
            times.append(time.perf_counter() - began)
        out[name] = {"seconds_p50": statistics.median(times), "scores": scores}
    pairs = list(zip(out["float32"].pop("scores"), out["int8"].pop("scores")))
    out["requests"] = len(pairs)
    out["same_top1"] = sum(int(a.argmax()) == int(b.argmax()) for a, b in pairs)
    out["top10_overlap"] = statistics.mean(
        len(set(a.topk(10).indices.tolist()) & set(b.topk(10).indices.tolist())) / 10 for a, b in pairs
    )
    print(f"int8: {out['same_top1']} of {len(pairs)} same top item, {out['int8']['seconds_p50']:.2f} s", flush=True)
    return out


def compile_trial(model, encoder, example, repeats: int = 9) -> dict:
    """torch.compile with a static shape and Inductor's CPU inference settings (weights frozen as constants, bf16
    weights prepacked for oneDNN) against eager, on one prompt: can fusing the element-wise work (norms, rotary
    embedding, SiLU) and prepacking weights close the gap to the floor? Eager is timed before and after."""
    import torch._dynamo
    import torch._inductor.config as inductor

    ids = torch.tensor([encoder.prompt_ids(example)])
    inputs = {"input_ids": ids, "position_ids": torch.arange(ids.shape[1])[None], "logits_to_keep": 1}
    saved = inductor.freezing, inductor.cpp.weight_prepack
    try:
        inductor.freezing, inductor.cpp.weight_prepack = True, True
        with torch.no_grad():
            eager = timed(lambda: model(**inputs, use_cache=False), repeats)
            compiled = torch.compile(model, dynamic=False)
            began = time.perf_counter()
            reference, out = model(**inputs, use_cache=False).logits, compiled(**inputs, use_cache=False).logits
            compile_seconds = time.perf_counter() - began
            fast = timed(lambda: compiled(**inputs, use_cache=False), repeats)
            eager += timed(lambda: model(**inputs, use_cache=False), repeats)
    finally:
        inductor.freezing, inductor.cpp.weight_prepack = saved
        torch._dynamo.reset()
    letters = encoder.verbalizer.ids(len(example.candidates))
    result = {
        "prompt_tokens": ids.shape[1],
        "eager_s": statistics.median(eager),
        "compiled_s": statistics.median(fast),
        "compile_s": compile_seconds,
        "same_top_letter": int(reference[0, -1, letters].argmax()) == int(out[0, -1, letters].argmax()),
    }
    print(f"compile: {result}", flush=True)
    return result


def serve_latency(workdir: Path, users: int, ranker: str, dtype: str) -> dict:
    from llamarec_cli.ranking.prompts import Example
    from llamarec_cli.serving.recommender import Recommender

    if ranker == "zero-shot":
        rec = Recommender("ml-100k", workdir=workdir, adapter="none", model="smollm2-135m", dtype=dtype, device="cpu")
    else:
        rec = Recommender("ml-100k", workdir=workdir, ranker=ranker, dtype=dtype, device="cpu")
    rec.recommend(rec.user_history("1"))  # warm-up
    totals, retrieval, ranking, tokens = [], [], [], []
    for user in rec.dataset.users["original_id"].head(users).to_list():
        history = rec.user_history(user)
        began = time.perf_counter()
        answer = rec.recommend(history)
        totals.append(time.perf_counter() - began)
        retrieval.append(answer.seconds["retrieval"])
        ranking.append(answer.seconds["ranking"])
        tokens.append(len(rec.encoder.prompt_ids(Example(history, [c["item"] for c in answer.candidates]))))
    totals.sort()
    p95 = totals[min(len(totals) - 1, round(0.95 * (len(totals) - 1)))]
    result = {
        "ranker": rec.ranker_name,
        "dtype": rec.dtype,
        "requests": len(totals),
        "p50_s": statistics.median(totals),
        "p95_s": p95,
        "retrieval_p50_s": statistics.median(retrieval),
        "ranking_p50_s": statistics.median(ranking),
        "prompt_tokens_p50": round(statistics.median(tokens)),
    }
    print(f"serve request: p50 {result['p50_s']:.2f} s, p95 {p95:.2f} s over {len(totals)} users", flush=True)
    return result


LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32}


def shaped_model_run(titles, examples, lengths, tokenizer, *, shape=LLAMA2_7B, device="cuda", dtype=torch.float16):
    """A random-weight Llama of the given shape (timing does not depend on the weights), the same comparison, and
    the arithmetic floor at the multiply rate of the model's own MLP shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, vocab_size=len(tokenizer), max_position_embeddings=4096)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    rows = compare(model, tokenizer, titles, examples, lengths, repeats=5, generation_repeats=1)
    rows = with_floor(
        rows, config, lambda t: matmul_rate(device, dtype, t, shape["hidden_size"], shape["intermediate_size"], 20)
    )
    name = torch.cuda.get_device_name() if device == "cuda" else device
    return {"device": name, "parameters": params, "matmul_tflops": rows[0]["matmul_gflops"] / 1e3, "rows": rows}


def llama2_tokenizer():
    from transformers import LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(SHARED / "tokenizers" / "llama-2", add_bos_token=True)
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def plot(cpu_rows: list[dict], gpu: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["title_tokens"] for r in cpu_rows]
    ax.plot(x, [r["generation_s"] for r in cpu_rows], "o-", label="generation, smollm2-135m, CPU")
    ax.plot(x, [r["verbalizer_s"] for r in cpu_rows], "s-", label="verbalizer, smollm2-135m, CPU")
    if gpu:
        gx = [r["title_tokens"] for r in gpu["rows"]]
        ax.plot(gx, [r["generation_s"] for r in gpu["rows"]], "o--", label="generation, Llama-2-7B shape, GPU")
        ax.plot(gx, [r["verbalizer_s"] for r in gpu["rows"]], "s--", label="verbalizer, Llama-2-7B shape, GPU")
    ax.set_yscale("log")
    ax.set_xlabel("average title length (tokens)")
    ax.set_ylabel("seconds per request (log)")
    ax.set_title("Ranking 20 candidates: verbalizer vs generation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(data: dict) -> str:
    dtype = data.get("dtype", "fp32")
    lines = [
        "# Efficiency benchmark (the paper's Figure 3)",
        "",
        f"`{data['command']}` ({data['date']}, {data['machine']}). Same requests for both methods: ml-100k test users,",
        "history and LRURec's 20 candidates, titles rewritten to about N tokens; medians.",
        "",
        f"## smollm2-135m on CPU, {dtype}",
        "",
        f"{data['cpu_parameters'] / 1e6:.0f} M parameters, both methods in {dtype}"
        + (f" ({data['dtype_reason']})" if data.get("dtype_reason") else "")
        + f", {data['threads']} threads, generation with the KV cache. Floor: the forward pass's multiply FLOPs "
        "(linear layers over every prompt token, causal attention, the LM head for one position) at the "
        f"{dtype} matrix-multiply rate measured on the model's MLP shape at that prompt length (best of 5).",
        "",
        "| title tokens | prompt tokens | verbalizer | floor (rate) | verbalizer / floor | generated tokens "
        "| generation | generation / verbalizer | prefill ms/token | decode ms/token |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["cpu"]:
        lines.append(
            f"| {r['title_tokens']} | {r['prompt_tokens']} | {r['verbalizer_s']:.3f} s | {r['floor_s']:.3f} s "
            f"({r['matmul_gflops']:,.0f} GFLOP/s) | {r['over_floor']:.2f}x | {r['generated_tokens']} | "
            f"{r['generation_s']:.1f} s | {r['speedup']:.1f}x | {r['prefill_ms_per_token']:.2f} | "
            f"{r['decode_ms_per_token']:.1f} |"
        )
    at20 = next((r for r in data["cpu"] if r["title_tokens"] == 20), None)
    if at20:
        needed = at20["generation_s"] / 50
        verdict = "meets" if at20["speedup"] >= 50 else "misses"
        lines += [
            "",
            f"At title length 20 the verbalizer is {at20['speedup']:.1f}x faster than generation ({verdict} the 50x "
            f"target, which needs it under {needed:.3f} s; its floor is {at20['floor_s']:.3f} s) and "
            f"{at20['over_floor']:.2f}x its arithmetic floor (target: within 1.5x). One generated token costs "
            f"{at20['decode_ms_per_token']:.0f} ms and one prompt token {at20['prefill_ms_per_token']:.2f} ms.",
        ]
    prof = data.get("profile")
    if prof:
        total = sum(prof[k] for k in ("matrix multiplies", "attention", "other"))
        lines += [
            "",
            f"Where one verbalizer pass of {prof['prompt_tokens']} tokens spends its time (torch profiler, self "
            f"CPU time, {total:.0f} ms in all): matrix multiplies {prof['matrix multiplies']:.0f} ms, the "
            f"attention kernel {prof['attention']:.0f} ms, everything else (norms, rotary embedding, SiLU, "
            f"residual adds, copies) {prof['other']:.0f} ms. The floor counts only the multiplies (linear layers "
            "and attention).",
        ]
    lines += ["", "Requests per second (verbalizer, real titles, the same requests at each batch size, medians):", ""]
    for b, t in data["throughput"].items():
        how = " (one forward pass per batch, as before)" if "one pass" in b else ""
        lines.append(
            f"- batch {b.split(',')[0]}{how}: {t['requests_per_second']:.2f} requests/s ({t['requests']} requests)"
        )
    a = data.get("agreement")
    if a:
        p = a["paired"]
        lines += [
            "",
            f"bf16 against fp32, the same trained ranker ({a['ranker']}) on {a['requests']} real prompts "
            f"(ml-100k validation and test subset users): the same top letter for {a['same_top1']} "
            f"({a['top1_agreement']:.1%}); Spearman correlation of the 20 letter logits mean {a['spearman_mean']:.4f}, "
            f"lowest {a['spearman_min']:.4f}; NDCG@10 {a['ndcg10']['bf16']:.4f} in bf16 against "
            f"{a['ndcg10']['fp32']:.4f} in fp32, paired difference {p['difference']:+.4f} ± {p['half_width']:.4f} "
            f"(95%; {p['better']} users ranked higher in bf16, {p['worse']} lower). Scoring took "
            f"{a['seconds']['bf16']:.0f} s in bf16 against {a['seconds']['fp32']:.0f} s in fp32.",
        ]
    t = data.get("train")
    if t:
        lines += [
            "",
            "rank-train in each dtype on the same examples (smollm2-135m, LoRA, retrieved negatives, batch 4, "
            "lr 5e-4, validation every 4 steps):",
            "",
            "| dtype | examples | examples/s | best validation NDCG@10 | LRURec's order | loss, every step |",
            "|---|---|---|---|---|---|",
        ]
        for d, r in t.items():
            lines.append(
                f"| {d} | {r['train_examples']} | {r['examples_per_second']:.2f} | {r['best_val_ndcg10']:.4f} | "
                f"{r['val_retriever_ndcg10']:.4f} | {' '.join(f'{x:.2f}' for x in r['losses'])} |"
            )
        if {"fp32", "bf16"} <= set(t):
            ratio = t["bf16"]["examples_per_second"] / t["fp32"]["examples_per_second"]
            lines += ["", f"bf16 trains {ratio:.1f}x as many examples per second as fp32."]
    q = data.get("int8")
    if q:
        lines += [
            "",
            f"Dynamic int8 quantisation (zero-shot model, {q['requests']} requests, batch 1): "
            f"{q['int8']['seconds_p50']:.2f} s against {q['float32']['seconds_p50']:.2f} s in float32, but the same "
            f"top item for only {q['same_top1']} of {q['requests']} requests (top-10 overlap "
            f"{q['top10_overlap']:.0%}), so llamarec does not use it.",
        ]
    c = data.get("compile")
    if c:
        lines += [
            "",
            f"torch.compile (static shape, weights frozen and prepacked, Inductor's CPU inference settings) on the "
            f"{c['prompt_tokens']}-token prompt: {c['compiled_s'] * 1000:.0f} ms against {c['eager_s'] * 1000:.0f} ms "
            f"eager ({c['eager_s'] / c['compiled_s']:.2f}x; medians, eager timed before and after), after "
            f"{c['compile_s']:.0f} s of compiling for that one prompt length; the same top letter: "
            f"{'yes' if c['same_top_letter'] else 'no'}. Too little for a compile per prompt length (or padding to "
            f"buckets), so llamarec does not compile.",
        ]
    s = data["serve"]
    lines += [
        "",
        f"One serve request (retrieval + ranking, ranker {s['ranker']}, {s.get('dtype', dtype)}): p50 "
        f"{s['p50_s']:.3f} s, p95 {s['p95_s']:.3f} s over {s['requests']} users (target: p50 at most 0.35 s).",
    ]
    if "ranking_p50_s" in s:
        lines.append(
            f"Median split: retrieval {1000 * s['retrieval_p50_s']:.0f} ms, ranking {s['ranking_p50_s']:.3f} s "
            f"for a median prompt of {s.get('prompt_tokens_p50', '?')} tokens."
        )
    lines += [
        "",
        "Paper (Llama 2 7B, one GPU): verbalizer under 1 s at every title length; generation 56.16 s at 20 tokens.",
    ]
    if data.get("gpu"):
        g = data["gpu"]
        lines += [
            "",
            f"## Llama-2-7B shape (random weights, fp16) on {g['device']}",
            "",
            f"{g['parameters'] / 1e9:.2f} B parameters; matrix multiply {g['matmul_tflops']:.0f} TFLOP/s.",
            "",
            "| title tokens | prompt tokens | verbalizer | floor | generation | generation / verbalizer "
            "| paper generation |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in g["rows"]:
            paper = "56.16 s" if r["title_tokens"] == 20 else ""
            lines.append(
                f"| {r['title_tokens']} | {r['prompt_tokens']} | {r['verbalizer_s']:.3f} s | "
                f"{r['floor_s']:.3f} s | {r['generation_s']:.1f} s | {r['speedup']:.0f}x | {paper} |"
            )
    else:
        lines += ["", "No CUDA GPU on this machine: the Llama-2-7B-shaped run was skipped."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamarec-bench-memory/pipeline"))
    parser.add_argument("--requests", type=int, default=3, help="verbalizer timings per title length")
    parser.add_argument("--generation-requests", type=int, default=2, help="generation timings per title length")
    parser.add_argument("--serve-users", type=int, default=20)
    parser.add_argument("--ranker", default="default", help="trained ranker for serving and bf16/fp32, or zero-shot")
    parser.add_argument("--dtype", default="auto", help="dtype of both methods: auto, bf16 or fp32")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="title lengths in tokens")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="batch sizes for requests/s")
    parser.add_argument("--agreement-prompts", type=int, default=200, help="real prompts for bf16 against fp32")
    parser.add_argument("--train-examples", type=int, default=64, help="rank-train examples in each dtype")
    parser.add_argument("--resume", action="store_true", help="keep the stages already in efficiency.json")
    args = parser.parse_args()

    from llamarec_cli.ranking.models import load_model
    from llamarec_cli.ranking.prompts import PromptEncoder
    from llamarec_cli.ranking.templates import load_template
    from llamarec_cli.stages.rank_train import ranker_dir

    dataset, examples = requests(args.workdir, 32)
    titles = dataset.titles
    loaded = load_model("smollm2-135m", device="cpu", dtype=args.dtype)
    path = RESULTS / "efficiency.json"
    data = json.loads(path.read_text()) if args.resume and path.is_file() else {}
    data |= {
        "command": "python benchmarks/efficiency.py " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "threads": torch.get_num_threads(),
        "cpu_parameters": sum(p.numel() for p in loaded.model.parameters()),
        "dtype": loaded.dtype,
        "dtype_reason": loaded.dtype_reason,
    }

    def stage(name, measure):  # each stage is saved as soon as it is measured; --resume skips those done
        if name not in data:
            data[name] = measure()
            RESULTS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2) + "\n")

    config = loaded.model.config
    torch_dtype = next(loaded.model.parameters()).dtype
    stage(
        "cpu",
        lambda: compare(
            loaded.model, loaded.tokenizer, titles, examples, args.lengths, args.requests, args.generation_requests
        ),
    )
    rate = lambda t: matmul_rate("cpu", torch_dtype, t, config.hidden_size, config.intermediate_size, 20)  # noqa: E731
    with_floor(data["cpu"], config, rate)  # measured once per row, kept in the row
    encoder = PromptEncoder(loaded.tokenizer, load_template(), titles)
    stage("throughput", lambda: throughput(loaded.model, encoder, examples, args.batches))
    long_titles = PromptEncoder(loaded.tokenizer, load_template(), titles_of_length(titles, 20, loaded.tokenizer))
    stage("profile", lambda: profile_forward(loaded.model, long_titles, examples[0]))
    trained = (ranker_dir(args.workdir, "ml-100k", args.ranker) / "manifest.json").is_file()
    stage(
        "serve",
        lambda: serve_latency(args.workdir, args.serve_users, args.ranker if trained else "zero-shot", args.dtype),
    )
    if trained:
        stage("agreement", lambda: dtype_agreement(args.workdir, args.ranker, args.agreement_prompts))
    stage("train", lambda: train_in_each_dtype(args.workdir, args.train_examples, 32))
    stage("int8", lambda: int8_trial(loaded.model, encoder, examples[:16]))
    stage("compile", lambda: compile_trial(loaded.model, long_titles, examples[0]))
    stage(
        "gpu",
        lambda: (
            shaped_model_run(titles, examples, args.lengths, llama2_tokenizer()) if torch.cuda.is_available() else None
        ),
    )
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "efficiency.md").write_text(markdown(data))
    plot(data["cpu"], data["gpu"], RESULTS / "efficiency.png")
    print((RESULTS / "efficiency.md").read_text())


if __name__ == "__main__":
    main()
