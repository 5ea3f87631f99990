"""One prepared check of the CUDA path: QLoRA, bf16, the Llama-2-7B-shaped timing, and what more data buys.

A GPU machine is lent rarely and briefly (about 15 minutes in all), so everything a GPU must confirm runs from one
command, with no arguments, in under 8 minutes on one GPU, and writes ``gpu-check.json`` and ``gpu-check.md`` to
``--out`` (default ``$OUT`` when set, else ``benchmarks/results``) after every stage, so a run cut short keeps what it
measured. A stage that fails is recorded with its error and the next one still runs.

1. machine: GPU, memory, torch / CUDA / bitsandbytes versions, the measured bf16 matmul rate;
2. retriever: LRURec on ml-100k on the GPU. The first steps' losses against the CPU's (same initial weights, same
   batches, dropout off), then a full ``retrieve-train`` of a fixed number of epochs (steps/s) and its candidates;
3. qlora: ``rank-train`` in 4-bit NF4 (double quantisation, bf16 compute, paged AdamW, gradient checkpointing) for a
   fixed number of steps, then ``evaluate``: the loss falls, the adapter loads with plain
   ``PeftModel.from_pretrained``, and bf16 and 4-bit letter logits agree with fp32 on the same prompts;
4. shaped: a Llama-2-7B-shaped model with random weights (timing does not depend on them), bf16 and 4-bit NF4:
   verbalizer latency at 20-token titles, greedy generation of the ranked titles on the same prompts, the ratio, and
   the arithmetic floor at the measured rate, beside the paper's (< 1 s against 56.16 s);
5. data (``--data-minutes``, default 3; 0 skips): SmolLM2 trained on as many ml-100k training prefixes as fit in that
   time, evaluated against the retriever order on the test subset.

The model is ``--model`` (default smollm2-135m). Where it cannot be had (the device machine reaches no hub and the
SmolLM2 file is larger than what travels there), a model of SmolLM2's shape with random weights and the Llama 2
tokenizer stands in: every code path and timing is exercised, the quality figures are then not the model's, and the
data stage is skipped. ``--dry-run`` runs every stage on the CPU on tiny shapes in under a minute (the test suite
does, so the script cannot rot).

    python benchmarks/gpu_check.py                      # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check
    bash benchmarks/gpu_prepare.sh                      # here: what the device machine lacks, into .carry/
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # efficiency.py beside this file

REPO = Path(__file__).resolve().parent.parent
PAPER_7B = {"verbalizer_s": 1.0, "generation_s": 56.16}  # METHOD.md: < 1 s per request against 56.16 s
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3}  # fmt: skip
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


def shared_dir() -> Path:
    """``$LLAMAREC_SHARED``, else ``../shared`` beside the repository, else ``.carry/shared`` (the device machine)."""
    if os.environ.get("LLAMAREC_SHARED"):
        return Path(os.environ["LLAMAREC_SHARED"])
    beside = REPO.parent / "shared"
    return beside if beside.is_dir() else REPO / ".carry" / "shared"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(distribution)
    except PackageNotFoundError:
        return None


# --- 1. the machine ---------------------------------------------------------------------------------------------------


def machine(ctx: dict) -> dict:
    from efficiency import matmul_rate

    device, size = ctx["device"], 8192 if ctx["device"] == "cuda" else 256
    out = {
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.machine()})",
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if device == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "versions": {name: version(name) for name in ("bitsandbytes", "transformers", "peft", "accelerate")},
        "python": platform.python_version(),
    }
    out["bf16_matmul_tflops"] = matmul_rate(device, torch.bfloat16, size, size, size, repeats=10) / 1e12
    print(f"machine: {out['device']}, bf16 matmul {out['bf16_matmul_tflops']:.1f} TFLOP/s", flush=True)
    return out


# --- 2. the retriever -------------------------------------------------------------------------------------------------


def first_users(raw: Path, folder: Path, users: int) -> Path:
    """A copy of the MovieLens files with only the first ``users`` users' ratings: the dry run's small ml-100k."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(raw / "movies.csv", folder / "movies.csv")
    with open(raw / "ratings.csv") as source, open(folder / "ratings.csv", "w") as target:
        target.write(next(source))
        target.writelines(line for line in source if int(line.split(",", 1)[0]) <= users)
    return folder


def retriever(ctx: dict) -> dict:
    """LRURec's first steps on the GPU against the CPU's, then a full training and the candidates."""
    from efficiency import LossCurve

    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.retrieval.train import fit
    from llamarec_cli.stages.candidates import export_candidates
    from llamarec_cli.stages.preprocess import preprocess
    from llamarec_cli.stages.retrieve_train import resolve_config, retriever_class, train_retriever

    workdir, device = ctx["workdir"], ctx["device"]
    if not (workdir / "ml-100k" / "dataset" / "manifest.json").is_file():
        raw = shared_dir() / "datasets" / "ml-latest-small"
        preprocess(
            "ml-100k", workdir=workdir, raw_dir=first_users(raw, workdir / "raw", 100) if ctx["dry_run"] else raw
        )
    dataset = load_dataset(workdir, "ml-100k")
    cls = retriever_class("lrurec")
    sizes = {"hidden": 16} if ctx["dry_run"] else {}
    steps = 5 if ctx["dry_run"] else 20
    config, _ = resolve_config(cls, "ml-100k", {**sizes, "dropout": 0.0, "val_every": 10_000})
    torch.manual_seed(config.seed)
    initial = cls(config, dataset.num_items).state_dict()
    losses = {}
    for where in ("cpu", device):  # same weights, same batches (the order is drawn on the CPU), no dropout
        model = cls(config, dataset.num_items)
        model.load_state_dict(initial)
        curve = LossCurve()
        fit(model, dataset, device=where, reporter=curve, stop_after_steps=steps)
        losses[where] = curve.losses
    worst = max(abs(a - b) / abs(a) for a, b in zip(losses["cpu"], losses[device]))
    out = {"first_losses": {k: [round(x, 5) for x in v] for k, v in losses.items()}, "worst_relative_gap": worst}
    out["losses_match"] = worst < 1e-3
    print(f"retriever: first {steps} losses, worst relative gap GPU/CPU {worst:.1e}", flush=True)

    epochs = 1 if ctx["dry_run"] else 30
    manifest = train_retriever(
        "ml-100k", workdir=workdir, flags={**sizes, "max_epochs": epochs, "val_every": 200}, device=device,
        restart=True,
    )  # fmt: skip
    training = manifest["training"]
    out |= {key: training[key] for key in ("steps", "epochs", "train_seconds", "steps_per_second", "best_step")}
    out["test"] = manifest["metrics"]["test"]
    began = time.perf_counter()
    candidates = export_candidates("ml-100k", workdir=workdir, device=device)
    out["candidates_seconds"] = time.perf_counter() - began
    out["hit_rate_at_20"] = {split: candidates["splits"][split]["hit_rate"] for split in ("val", "test")}
    print(f"retriever: {training['steps']} steps at {training['steps_per_second']:.1f} steps/s", flush=True)
    return out


# --- 3. QLoRA ---------------------------------------------------------------------------------------------------------


def model_source(ctx: dict) -> tuple[str, bool]:
    """(model name or folder, real weights?): ``--model`` when it loads, else a random model of SmolLM2's shape."""
    from llamarec_cli.errors import LlamarecError
    from llamarec_cli.ranking.models import resolve_model

    if not ctx["dry_run"]:
        try:
            return resolve_model(ctx["model"]), True
        except LlamarecError as exc:
            print(f"{ctx['model']} cannot be had here ({exc}); a random model of its shape stands in", flush=True)
    folder = ctx["workdir"] / "random-model"
    if not (folder / "config.json").is_file():
        random_llama(TINY if ctx["dry_run"] else SMOLLM2).save_pretrained(folder)
        llama2_tokenizer().save_pretrained(folder)
    return str(folder), False


def random_llama(shape: dict, device: str = "cpu", dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**shape, vocab_size=32000, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
    with torch.device(device):
        return LlamaForCausalLM(config).to(dtype).eval()


def llama2_tokenizer():
    from transformers import LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(shared_dir() / "tokenizers" / "llama-2", add_bos_token=True)
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def qlora(ctx: dict) -> dict:
    """rank-train in 4-bit NF4 for a fixed number of steps, evaluate, reload the adapter with plain peft, and compare
    bf16 and 4-bit letter logits with fp32 on the same prompts."""
    from efficiency import LossCurve

    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.ranking.config import RankerConfig
    from llamarec_cli.ranking.examples import valid_subset
    from llamarec_cli.ranking.scoring import agreement, score_examples
    from llamarec_cli.stages.candidates import load_candidates
    from llamarec_cli.stages.evaluate import evaluate, load_ranker
    from llamarec_cli.stages.rank_train import ranker_dir, train_ranker

    workdir, device, dry = ctx["workdir"], ctx["device"], ctx["dry_run"]
    source, real = model_source(ctx)
    ctx["ranker_model"], ctx["real_model"] = source, real
    batch, steps = (2, 2) if dry else (8, 40)
    config = RankerConfig(
        model=source, quantization="4bit", dtype="bf16", negatives="random", max_train_examples=batch * steps,
        batch_size=batch, eval_every=steps // 2, max_val_examples=4 if dry else 100, lr=5e-4, warmup_steps=2,
        patience=100, gradient_checkpointing=True,
    )  # fmt: skip
    curve = LossCurve()
    manifest = train_ranker("ml-100k", workdir=workdir, config=config, name="qlora", device=device, restart=True,
                            reporter=curve)  # fmt: skip
    losses = curve.losses
    quarter = max(1, len(losses) // 4)
    out = {
        "model": ctx["model"] if real else f"random weights, shape of {'a tiny Llama' if dry else 'SmolLM2-135M'}",
        "quantization": manifest["model"].get("quantization"),
        "dtype": manifest["model"]["dtype"],
        "optimizer": manifest.get("optimizer"),
        "steps": manifest["steps"],
        "train_seconds": manifest["train_seconds"],
        "examples_per_second": manifest["steps"] * batch / manifest["train_seconds"],
        "losses": [round(x, 4) for x in losses],
        "first_quarter_loss": statistics.mean(losses[:quarter]),
        "last_quarter_loss": statistics.mean(losses[-quarter:]),
        "val_ndcg10": manifest["val_metrics"]["NDCG@10"],
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }
    out["loss_falls"] = out["last_quarter_loss"] < out["first_quarter_loss"]
    ctx["examples_per_second"] = out["examples_per_second"]
    report = evaluate("ml-100k", workdir=workdir, ranker="qlora", device=device, max_examples=8 if dry else 200)
    out["evaluate"] = {"subset_users": report["ranked_users"], "subset": report["subset"]}

    # the adapter as any peft user loads it, and the letter logits in each precision on the same prompts
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = ranker_dir(workdir, "ml-100k", "qlora") / "adapter"
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    PeftModel.from_pretrained(base, adapter)
    out["adapter_loads_with_peft"] = True
    dataset = load_dataset(workdir, "ml-100k")
    frame, _ = load_candidates(workdir, dataset)
    examples = valid_subset(dataset, frame, "test").examples[: 4 if dry else 64]
    scores = {}
    for name, quantization, dtype in (("fp32", "none", "fp32"), ("bf16", "none", "bf16"), ("4bit", "4bit", "bf16")):
        loaded = load_ranker(dataset, workdir, ranker="qlora", device=device, quantization=quantization, dtype=dtype)
        scores[name] = score_examples(loaded.model, loaded.encoder, examples)
        if name == "bf16":  # what `llamarec serve`'s micro-batching buys on a GPU (on 2 CPU cores: nothing)
            out["batching"] = batching(loaded, examples, device)
        del loaded
    out["agreement_with_fp32"] = {name: agreement(scores["fp32"], scores[name]) for name in ("bf16", "4bit")}
    print(
        f"qlora: loss {out['first_quarter_loss']:.3f} -> {out['last_quarter_loss']:.3f}, top-1 agreement with fp32: "
        + ", ".join(f"{k} {v['top1_agreement']:.2f}" for k, v in out["agreement_with_fp32"].items()),
        flush=True,
    )
    return out


def batching(loaded, examples: list, device: str) -> dict:
    """Requests per second scoring the same prompts one per forward pass and 16 per pass (the server's batches)."""
    from llamarec_cli.ranking.scoring import score_examples

    rates = {}
    for size in (1, 16):
        score_examples(loaded.model, loaded.encoder, examples[:size], batch_size=size)  # warm this shape
        sync(device)
        began = time.perf_counter()
        score_examples(loaded.model, loaded.encoder, examples, batch_size=size, tokens_per_pass=10**9)
        sync(device)
        rates[str(size)] = len(examples) / (time.perf_counter() - began)  # str: the keys JSON keeps
    return {"requests": len(examples), "per_second": rates, "speedup": rates["16"] / rates["1"]}


# --- 4. the Llama-2-7B-shaped model -----------------------------------------------------------------------------------


def quantize_4bit(model, compute_dtype=torch.bfloat16):
    """Every linear layer but the LM head as a bitsandbytes NF4 layer with double quantisation (what QLoRA loads),
    in place: a random model need not be saved and reloaded through ``from_pretrained`` to be quantised."""
    import bitsandbytes as bnb

    device = next(model.parameters()).device
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or name == "lm_head":
                continue
            layer = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None, compute_dtype=compute_dtype,
                compress_statistics=True, quant_type="nf4", device="meta",
            )  # fmt: skip
            weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                       quant_type="nf4")  # fmt: skip
            layer.weight = weight.to(device)  # moving a Params4bit quantises it
            setattr(parent, name, layer)
    return model


def shaped(ctx: dict) -> dict:
    """The paper's Figure 3 setting: a Llama-2-7B-shaped model, bf16 then 4-bit NF4, verbalizer against generation."""
    from efficiency import LLAMA2_7B, compare, matmul_rate, with_floor

    from llamarec_cli.data.artifact import load_dataset
    from llamarec_cli.ranking.examples import valid_subset
    from llamarec_cli.stages.candidates import load_candidates

    workdir, device, dry = ctx["workdir"], ctx["device"], ctx["dry_run"]
    shape = TINY if dry else LLAMA2_7B
    dataset = load_dataset(workdir, "ml-100k")
    frame, _ = load_candidates(workdir, dataset)
    examples = valid_subset(dataset, frame, "test").examples[:5]
    tokenizer = llama2_tokenizer()
    lengths = [2] if dry else [20]  # the paper's Figure 3 point: titles of about 20 tokens
    out = {"shape": shape, "paper": PAPER_7B}
    model = random_llama(shape, device, torch.bfloat16)
    out["parameters"] = sum(p.numel() for p in model.parameters())
    # one rate for both rows, measured on the model's MLP shape at the prompt's length: 4-bit dequantises to bf16
    rates = {}

    def rate(tokens: int) -> float:
        if tokens not in rates:
            rates[tokens] = matmul_rate(
                device, torch.bfloat16, tokens, shape["hidden_size"], shape["intermediate_size"], 10
            )
        return rates[tokens]

    for name in ("bf16", "4bit"):
        if name == "4bit":
            model = quantize_4bit(model)
            torch.cuda.empty_cache() if device == "cuda" else None
        rows = compare(model, tokenizer, dataset.titles, examples, lengths, repeats=3 if dry else 5,
                       generation_repeats=1 if dry else 2)  # fmt: skip
        rows = with_floor(rows, model.config, rate)
        out[name] = rows[0]
        print(
            f"7B-shaped {name}: verbalizer {rows[0]['verbalizer_s']:.3f} s, generation "
            f"{rows[0]['generation_s']:.1f} s, x{rows[0]['speedup']:.0f}, floor {rows[0]['floor_s']:.3f} s",
            flush=True,
        )
    del model
    return out


# --- 5. what more data buys -------------------------------------------------------------------------------------------


def data(ctx: dict) -> dict:
    """SmolLM2 trained on as many ml-100k training prefixes as fit in ``--data-minutes``, against the retriever's
    order: what data, not the model, buys."""
    from llamarec_cli.ranking.config import RankerConfig
    from llamarec_cli.stages.evaluate import evaluate
    from llamarec_cli.stages.rank_train import train_ranker

    if ctx["data_minutes"] <= 0:
        return {"skipped": "--data-minutes 0"}
    if not ctx["dry_run"] and not ctx.get("real_model"):
        return {"skipped": f"{ctx['model']} could not be had: random weights learn nothing worth measuring"}
    rate = ctx.get("examples_per_second") or 1.0
    batch = 4 if ctx["dry_run"] else 16
    examples = max(batch, int(rate * ctx["data_minutes"] * 60) // batch * batch)
    config = RankerConfig(
        model=ctx["ranker_model"], negatives="random", max_train_examples=examples, batch_size=batch,
        eval_every=max(1, examples // batch // 4), max_val_examples=8 if ctx["dry_run"] else 200,
        lr=3e-4, warmup_steps=max(1, examples // batch // 20), patience=100,
    )  # fmt: skip
    workdir, device = ctx["workdir"], ctx["device"]
    manifest = train_ranker("ml-100k", workdir=workdir, config=config, name="data", device=device, restart=True)
    report = evaluate("ml-100k", workdir=workdir, ranker="data", device=device, max_examples=None)
    out = {
        "train_examples": manifest["train_examples"],
        "train_seconds": manifest["train_seconds"],
        "fusion_alpha": (manifest.get("fusion") or {}).get("alpha"),
        "subset_users": report["ranked_users"],
        "subset": report["subset"],
        "paired_by_order": report["paired_by_order"],
    }
    ndcg = {who: m["NDCG@10"] for who, m in report["subset"].items()}
    print(f"data: {out['train_examples']} examples, subset NDCG@10 {ndcg}", flush=True)
    return out


# --- the report -------------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    lines = ["# GPU check of the CUDA path", "", f"`{result['command']}` ({result['date']})", ""]
    if result["dry_run"]:
        lines += ["**Dry run on the CPU with tiny shapes: the figures say the code runs, nothing about a GPU.**", ""]
    m = result["stages"].get("machine", {})
    if "device" in m:
        lines += [
            f"- machine: {m['device']}, {m['memory_gib']} GiB, torch {m['torch']}, CUDA {m['cuda']}, "
            f"bitsandbytes {m['versions']['bitsandbytes']}; bf16 matmul {m['bf16_matmul_tflops']:.1f} TFLOP/s"
        ]
    r = result["stages"].get("retriever", {})
    if "steps" in r:
        lines += [
            f"- retrieve-train (LRURec, ml-100k): first {len(r['first_losses']['cpu'])} losses match the CPU's: "
            f"{r['losses_match']} (worst relative gap {r['worst_relative_gap']:.1e}); {r['steps']} steps at "
            f"{r['steps_per_second']:.1f} steps/s; test Recall@10 {r['test']['Recall@10']:.4f}; candidates in "
            f"{r['candidates_seconds']:.1f} s"
        ]
    q = result["stages"].get("qlora", {})
    if "steps" in q:
        agree = q["agreement_with_fp32"]
        lines += [
            f"- rank-train QLoRA ({q['model']}, {q['quantization']}, {q['dtype']}, {q['optimizer']}): {q['steps']} "
            f"steps, {q['examples_per_second']:.1f} examples/s, loss {q['first_quarter_loss']:.3f} (first quarter) -> "
            f"{q['last_quarter_loss']:.3f} (last), falls: {q['loss_falls']}; adapter loads with "
            f"PeftModel.from_pretrained: {q['adapter_loads_with_peft']}",
            "- letter logits against fp32 on the same prompts: "
            + "; ".join(
                f"{k}: same top letter {v['same_top1']}/{v['requests']}, Spearman mean {v['spearman_mean']:.3f} "
                f"(min {v['spearman_min']:.3f})"
                for k, v in agree.items()
            ),
        ]
        if "batching" in q:
            b = q["batching"]
            lines.append(
                f"- serving's micro-batching (bf16, {b['requests']} prompts): {b['per_second']['1']:.1f} requests/s "
                f"one per pass, {b['per_second']['16']:.1f} at 16 per pass: {b['speedup']:.1f}x (aim of issue 21: 2x)"
            )
    s = result["stages"].get("shaped", {})
    if "bf16" in s:
        lines += [
            "",
            f"## Llama-2-7B-shaped model, random weights ({s['parameters'] / 1e6:,.0f} M parameters)",
            "",
            "| precision | title tokens | prompt tokens | verbalizer | floor at measured bf16 rate | generation "
            "| generation / verbalizer |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in ("bf16", "4bit"):
            if name in s:
                row = s[name]
                lines.append(
                    f"| {name} | {row['title_tokens']} | {row['prompt_tokens']} | {row['verbalizer_s']:.3f} s | "
                    f"{row['floor_s']:.4f} s ({row['matmul_gflops'] / 1e3:.0f} TFLOP/s) | {row['generation_s']:.1f} s "
                    f"| {row['speedup']:.0f}x |"
                )
        lines.append(f"| paper (A100, Llama 2 7B) | | | < {PAPER_7B['verbalizer_s']:.0f} s | | "
                     f"{PAPER_7B['generation_s']} s | > 56x |")  # fmt: skip
    d = result["stages"].get("data", {})
    if "subset" in d:
        lines += [
            "",
            f"## SmolLM2 on {d['train_examples']:,} training examples ({d['train_seconds'] / 60:.1f} min)",
            "",
        ]
        lines += [f"- {who}: subset NDCG@10 {v['NDCG@10']:.4f}" for who, v in d["subset"].items()]
        lines += [
            f"- {who} minus retriever order: {v['difference']:+.4f} ± {v['half_width']:.4f} ({v['better']} users up, "
            f"{v['worse']} down)"
            for who, v in d["paired_by_order"].items()
        ]
    elif d:
        lines += [f"- data stage skipped: {d.get('skipped', d.get('error'))}"]
    failed = {k: v["error"] for k, v in result["stages"].items() if isinstance(v, dict) and "error" in v}
    if failed:
        lines += ["", "## Stages that failed", ""] + [f"- {k}: `{v}`" for k, v in failed.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "benchmarks" / "results"
    parser.add_argument("--out", type=Path, default=default_out, help="folder for gpu-check.json and .md")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU on tiny shapes (< 1 min)")
    parser.add_argument("--model", default="smollm2-135m", help="the ranker's model for the qlora and data stages")
    parser.add_argument("--data-minutes", type=float, default=3.0, help="training time of the data stage; 0 skips")
    parser.add_argument("--workdir", type=Path, help="work directory (default: a fresh temporary one)")
    parser.add_argument("--stages", nargs="+", default=["machine", "retriever", "qlora", "shaped", "data"])
    args = parser.parse_args()

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("torch sees no CUDA GPU here. On a CPU, try: python benchmarks/gpu_check.py --dry-run")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llamarec-gpu-check-"))
    os.environ["LLAMAREC_WORKDIR"] = str(workdir)
    os.environ.setdefault("LLAMAREC_CACHE_DIR", str(workdir / "cache"))
    ctx = {
        "device": "cpu" if args.dry_run else "cuda",
        "dry_run": args.dry_run,
        "workdir": workdir,
        "model": args.model,
        "data_minutes": 0.05 if args.dry_run and args.data_minutes else args.data_minutes,
    }
    result = {
        "command": "python benchmarks/gpu_check.py " + shlex.join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "stages": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stages = {"machine": machine, "retriever": retriever, "qlora": qlora, "shaped": shaped, "data": data}
    for name in args.stages:
        began = time.perf_counter()
        try:
            result["stages"][name] = stages[name](ctx)
        except Exception as exc:  # one stage's failure must not cost the others on a machine held for minutes
            traceback.print_exc()
            result["stages"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        result["stages"][name]["seconds"] = round(time.perf_counter() - began, 1)
        print(f"--- {name}: {result['stages'][name]['seconds']} s", flush=True)
        (args.out / "gpu-check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (args.out / "gpu-check.md").write_text(markdown(result))
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(result))
    failed = [name for name, stage in result["stages"].items() if "error" in stage]
    if failed:
        sys.exit(f"stages that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
