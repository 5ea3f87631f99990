"""Benchmark: how fast the verbalizer ranks, against generating the ranked list (the paper's Figure 3).

On the same model and the same requests (ml-100k test users: their history and LRURec's 20 candidates), with every
title rewritten to about N tokens for N in 5, 10, 15, 20, 30:

- verbalizer: one forward pass, the candidates' letter logits (what llamarec does);
- generation: greedy decoding of the ranked list of titles, stopped at the combined titles' length (what a
  generative ranker must do to name 20 titles).

Also, with the real titles: requests per second at batch 1, 8 and 32, and the p50 / p95 end-to-end latency of one
``serve-shell`` request (retrieval over all items plus ranking). With a CUDA GPU, the same comparison runs on a
Llama-2-7B-shaped model with random weights (timing does not depend on the weights), next to the arithmetic floor
2 x parameters x prompt tokens at the measured matrix-multiply rate.

Writes ``benchmarks/results/efficiency.json``, ``efficiency.md`` and ``efficiency.png``. Needs a workdir with
ml-100k candidates (``benchmarks/ranking.py`` makes one). The plot needs matplotlib (``pip install -e ".[bench]"``).

    .venv/bin/python benchmarks/efficiency.py
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


def with_floor(rows: list[dict], parameters: int, flops: float) -> list[dict]:
    """Each row with its arithmetic floor (2 x parameters x prompt tokens at ``flops``) and per-token costs."""
    for row in rows:
        row["floor_s"] = 2 * parameters * row["prompt_tokens"] / flops
        row["prefill_ms_per_token"] = 1000 * row["verbalizer_s"] / row["prompt_tokens"]
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
    from llamarec_cli.retrieval.candidates import load_candidates

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


def throughput(model, encoder, examples, batch_sizes) -> dict:
    from llamarec_cli.ranking.scoring import score_examples

    out = {}
    for b in batch_sizes:
        chosen = examples[: max(b, 8)]
        seconds = timed(lambda chosen=chosen, b=b: score_examples(model, encoder, chosen, batch_size=b), 1)[0]
        out[str(b)] = {"requests": len(chosen), "seconds": seconds, "requests_per_second": len(chosen) / seconds}
        print(f"batch {b}: {len(chosen) / seconds:.2f} requests/s", flush=True)
    return out


def int8_trial(model, encoder, examples) -> dict:
    """Dynamic int8 quantisation (per-channel weights, every linear layer but the LM head): how much faster, and
    whether it keeps the ranker's order. The verbalizer compares 20 logits that can lie close together."""
    import copy
    import warnings

    from llamarec_cli.ranking.scoring import score_examples

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


def serve_latency(workdir: Path, users: int, ranker: str) -> dict:
    from llamarec_cli.ranking.prompts import Example
    from llamarec_cli.serving.recommender import Recommender

    if ranker == "zero-shot":
        rec = Recommender("ml-100k", workdir=workdir, adapter="none", model="smollm2-135m", device="cpu")
    else:
        rec = Recommender("ml-100k", workdir=workdir, ranker=ranker, device="cpu")
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
    flops = matmul_rate(device, dtype, 1000, shape["hidden_size"], shape["intermediate_size"], 20)
    rows = with_floor(
        compare(model, tokenizer, titles, examples, lengths, repeats=5, generation_repeats=1), params, flops
    )
    name = torch.cuda.get_device_name() if device == "cuda" else device
    return {"device": name, "parameters": params, "matmul_tflops": flops / 1e12, "rows": rows}


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
    lines = [
        "# Efficiency benchmark (the paper's Figure 3)",
        "",
        f"`{data['command']}` ({data['date']}, {data['machine']}). Same requests for both methods: ml-100k test users,",
        "history and LRURec's 20 candidates, titles rewritten to about N tokens; medians.",
        "",
        "## smollm2-135m on CPU",
        "",
        f"{data['cpu_parameters'] / 1e6:.0f} M parameters; float32 matrix multiply "
        f"{data['cpu_matmul_gflops']:.0f} GFLOP/s on {data['threads']} threads (the model's MLP shape, best of 5). "
        "Floor = 2 x parameters x prompt tokens at that rate.",
        "",
        "| title tokens | prompt tokens | verbalizer | floor | generated tokens | generation | generation / verbalizer "
        "| prefill ms/token | decode ms/token |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["cpu"]:
        lines.append(
            f"| {r['title_tokens']} | {r['prompt_tokens']} | {r['verbalizer_s']:.2f} s | {r['floor_s']:.2f} s | "
            f"{r['generated_tokens']} | {r['generation_s']:.1f} s | {r['speedup']:.1f}x | "
            f"{r['prefill_ms_per_token']:.1f} | {r['decode_ms_per_token']:.1f} |"
        )
    at20 = next((r for r in data["cpu"] if r["title_tokens"] == 20), None)
    if at20:
        needed = at20["generation_s"] / 50
        lines += [
            "",
            f"At title length 20 the target (50x) needs the verbalizer under {needed:.2f} s; its arithmetic floor "
            f"on this CPU is {at20['floor_s']:.2f} s"
            + (
                ": no implementation of the forward pass reaches the target here. "
                if needed < at20["floor_s"]
                else ", so the gap is overhead above the floor. "
            )
            + f"On a CPU one generated token costs {at20['decode_ms_per_token']:.0f} ms and one prompt "
            f"token {at20['prefill_ms_per_token']:.1f} ms: the ratio is about 1 + generated tokens x "
            f"{at20['decode_ms_per_token'] / at20['prefill_ms_per_token']:.0f} / prompt tokens. A GPU makes prompt "
            "tokens far cheaper than generated ones (parallel arithmetic against one pass over the weights per "
            "token), which is where the paper's ratio comes from.",
        ]
    lines += ["", "Requests per second (verbalizer, real titles):", ""]
    for b, t in data["throughput"].items():
        lines.append(f"- batch {b}: {t['requests_per_second']:.2f} requests/s ({t['requests']} requests)")
    q = data.get("int8")
    if q:
        lines += [
            "",
            f"Dynamic int8 quantisation (zero-shot model, {q['requests']} requests, batch 1): "
            f"{q['int8']['seconds_p50']:.2f} s against {q['float32']['seconds_p50']:.2f} s in float32, but the same "
            f"top item for only {q['same_top1']} of {q['requests']} requests (top-10 overlap "
            f"{q['top10_overlap']:.0%}), so llamarec does not use it.",
        ]
    s = data["serve"]
    lines += [
        "",
        f"One serve request (retrieval + ranking, ranker {s['ranker']}): p50 {s['p50_s']:.2f} s, "
        f"p95 {s['p95_s']:.2f} s over {s['requests']} users.",
    ]
    if "ranking_p50_s" in s:
        tokens = s.get("prompt_tokens_p50")
        lines.append(
            f"Median split: retrieval {1000 * s['retrieval_p50_s']:.0f} ms, ranking {s['ranking_p50_s']:.2f} s"
            + (
                f" for a median prompt of {tokens} tokens, whose floor is "
                f"{2 * data['cpu_parameters'] * tokens / (data['cpu_matmul_gflops'] * 1e9):.2f} s."
                if tokens
                else "."
            )
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
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/llamarec-bench-ranking"))
    parser.add_argument("--requests", type=int, default=3, help="verbalizer timings per title length")
    parser.add_argument("--generation-requests", type=int, default=2, help="generation timings per title length")
    parser.add_argument("--serve-users", type=int, default=20)
    parser.add_argument("--ranker", default="random", help="trained ranker for the serve latency, or zero-shot")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="title lengths in tokens")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="batch sizes for requests/s")
    parser.add_argument("--resume", action="store_true", help="keep the stages already in efficiency.json")
    args = parser.parse_args()

    from llamarec_cli.ranking.models import load_model
    from llamarec_cli.ranking.prompts import PromptEncoder
    from llamarec_cli.ranking.templates import load_template
    from llamarec_cli.ranking.train import ranker_dir

    dataset, examples = requests(args.workdir, 32)
    titles = dataset.titles
    loaded = load_model("smollm2-135m", device="cpu")
    path = RESULTS / "efficiency.json"
    data = json.loads(path.read_text()) if args.resume and path.is_file() else {}
    data |= {
        "command": "python benchmarks/efficiency.py " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "threads": torch.get_num_threads(),
        "cpu_parameters": sum(p.numel() for p in loaded.model.parameters()),
    }

    def stage(name, measure):  # each stage is saved as soon as it is measured; --resume skips those done
        if name not in data:
            data[name] = measure()
            RESULTS.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2) + "\n")

    shape = loaded.model.config  # the model's largest projection, for a 1,000-token prompt
    stage(
        "cpu_matmul_gflops",
        lambda: matmul_rate("cpu", torch.float32, 1000, shape.hidden_size, shape.intermediate_size, 20) / 1e9,
    )
    stage(
        "cpu",
        lambda: compare(
            loaded.model, loaded.tokenizer, titles, examples, args.lengths, args.requests, args.generation_requests
        ),
    )
    encoder = PromptEncoder(loaded.tokenizer, load_template(), titles)
    stage("throughput", lambda: throughput(loaded.model, encoder, examples, args.batches))
    stage("int8", lambda: int8_trial(loaded.model, encoder, examples[:16]))
    trained = (ranker_dir(args.workdir, "ml-100k", args.ranker) / "manifest.json").is_file()
    stage("serve", lambda: serve_latency(args.workdir, args.serve_users, args.ranker if trained else "zero-shot"))
    stage(
        "gpu",
        lambda: (
            shaped_model_run(titles, examples, args.lengths, llama2_tokenizer()) if torch.cuda.is_available() else None
        ),
    )
    with_floor(data["cpu"], data["cpu_parameters"], data["cpu_matmul_gflops"] * 1e9)
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "efficiency.md").write_text(markdown(data))
    plot(data["cpu"], data["gpu"], RESULTS / "efficiency.png")
    print((RESULTS / "efficiency.md").read_text())


if __name__ == "__main__":
    main()
