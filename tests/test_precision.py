"""--dtype auto: bf16 where the CPU multiplies it fast (a measured, cached probe), fp32 elsewhere; the bf16 ranker
scores like the fp32 one and trains with its LoRA weights in fp32; a step split into passes has the batch's gradient."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fast_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from llamarec_cli import precision
from llamarec_cli.errors import ConfigError
from llamarec_cli.ranking.models import load_model
from llamarec_cli.ranking.prompts import Example, PromptEncoder, pad_id
from llamarec_cli.ranking.scoring import agreement, pass_token_cap, passes, score_examples
from llamarec_cli.ranking.templates import load_template
from llamarec_cli.stages.evaluate import evaluate, load_ranker
from llamarec_cli.stages.rank_train import accumulate_step, ranker_dir, train_ranker

REAL_MATMUL_GFLOPS = precision.matmul_gflops  # taken at import, before conftest pins it for each test
TITLES = {i: f"Movie number {i} ({1990 + i % 30})" for i in range(1, 41)}


def fake_rates(monkeypatch, fp32: float, bf16: float) -> list[str]:
    calls: list[str] = []

    def measure(dtype, **kw):
        calls.append(dtype)
        return {"fp32": fp32, "bf16": bf16}[dtype]

    monkeypatch.setattr(precision, "matmul_gflops", measure)
    return calls


def test_auto_picks_bf16_only_where_the_cpu_multiplies_it_fast(monkeypatch, tmp_path):
    calls = fake_rates(monkeypatch, fp32=300.0, bf16=2000.0)
    choice = precision.choose_dtype("auto", "cpu")
    assert choice.dtype == "bf16" and "6.7x" in choice.reason and "--dtype fp32" in choice.reason
    assert calls == ["fp32", "bf16"]
    assert precision.choose_dtype("auto", "cpu").dtype == "bf16" and len(calls) == 2  # cached: measured once
    cache = json.loads((tmp_path / "cache" / precision.PROBE_FILE).read_text())
    assert cache[precision.machine_key()] == {"fp32_gflops": 300.0, "bf16_gflops": 2000.0}

    (tmp_path / "cache" / precision.PROBE_FILE).write_text("{not json")  # a damaged cache is measured again
    calls = fake_rates(monkeypatch, fp32=300.0, bf16=250.0)  # a CPU that emulates bf16
    choice = precision.choose_dtype("auto", "cpu")
    assert choice.dtype == "fp32" and "0.8x" in choice.reason and calls == ["fp32", "bf16"]

    assert precision.choose_dtype("fp32", "cpu").dtype == "fp32"
    assert precision.choose_dtype("bf16", "cpu").dtype == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.choose_dtype("auto", "cuda:0").dtype == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.choose_dtype("auto", "cuda:0").dtype == "fp32"
    with pytest.raises(ConfigError, match=r"Unknown dtype 'fp8'\. Use one of: auto, bf16, fp16, fp32\."):
        precision.choose_dtype("fp8", "cpu")


def test_the_probe_is_not_shared_by_chips_that_differ_only_in_bf16_features(monkeypatch):
    """A virtual machine may call chips of different generations just "AMD EPYC": the bf16 flags tell them apart."""
    info = {"model name": "AMD EPYC", "flags": "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile"}
    monkeypatch.setattr(precision, "_cpuinfo", info.get)
    with_amx = precision.machine_key()
    info["flags"] = "fpu avx2 avx512f avx512_bf16"
    without_amx = precision.machine_key()
    assert with_amx != without_amx and "AMD EPYC [amx_bf16 avx512_bf16 avx512f avx2]" in with_amx


def test_the_real_probe_measures_both_rates():
    for dtype in ("fp32", "bf16"):
        assert REAL_MATMUL_GFLOPS(dtype, repeats=2, rounds=1) > 0


def test_load_model_auto_follows_the_probe(monkeypatch, tiny_llama_dir):
    fake_rates(monkeypatch, fp32=300.0, bf16=2000.0)
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    assert loaded.dtype == "bf16" and {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert "measured once" in loaded.dtype_reason
    assert load_model(str(tiny_llama_dir), device="cpu", dtype="fp32").dtype == "fp32"


def test_bf16_scores_agree_with_fp32(llama2_tokenizer_dir, tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(llama2_tokenizer_dir)
    encoder = PromptEncoder(tokenizer, load_template(), TITLES)
    g = torch.Generator().manual_seed(0)
    examples = [
        Example(torch.randint(1, 41, (5,), generator=g).tolist(), (torch.randperm(40, generator=g)[:20] + 1).tolist())
        for _ in range(24)
    ]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    full = score_examples(model, encoder, examples)
    half = score_examples(model.to(torch.bfloat16), encoder, examples)
    assert all(s.dtype == torch.float32 for s in half)  # read out in fp32 whatever the model's dtype
    same = agreement(full, half)
    assert same["top1_agreement"] >= 0.9 and same["spearman_mean"] >= 0.95, same
    shuffled = agreement(full, [s[torch.randperm(len(s), generator=g)] for s in full])  # the measure can fail
    assert shuffled["spearman_mean"] < 0.5


def test_rank_train_in_bf16_keeps_lora_in_fp32_and_scores_like_fp32(
    monkeypatch, chain_with_candidates, workdir, tiny_llama_dir
):
    from peft import PeftModel
    from safetensors.torch import load_file

    fake_rates(monkeypatch, fp32=300.0, bf16=2000.0)
    config = fast_config(tiny_llama_dir)
    manifest = train_ranker("chain", workdir=workdir, config=config, device="cpu")
    assert manifest["config"]["dtype"] == "auto" and manifest["model"]["dtype"] == "bf16"
    assert "bf16" in manifest["model"]["dtype_reason"]
    first, last = manifest["validations"][0], manifest["validations"][-1]
    assert first["step"] < last["step"]
    weights = load_file(ranker_dir(workdir, "chain", "default") / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}  # adapter and optimizer in fp32 (PEFT autocast)
    assert any(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k)  # it learned

    ranker = load_ranker(chain_with_candidates, workdir, device="cpu")
    assert ranker.dtype == "bf16" and not isinstance(ranker.model, PeftModel)  # merged, as in fp32
    full = load_ranker(chain_with_candidates, workdir, device="cpu", dtype="fp32")
    g = torch.Generator().manual_seed(1)
    examples = [Example([1, 2, 3], (torch.randperm(40, generator=g)[:10] + 1).tolist()) for _ in range(12)]
    same = agreement(
        score_examples(full.model, full.encoder, examples), score_examples(ranker.model, ranker.encoder, examples)
    )
    assert same["top1_agreement"] >= 0.9 and same["spearman_mean"] >= 0.95, same
    report = evaluate("chain", workdir=workdir, device="cpu", max_examples=4)
    assert report["ranker"]["dtype"] == "bf16"
    fp32 = evaluate("chain", workdir=workdir, device="cpu", max_examples=4, dtype="fp32")
    assert fp32["ranker"]["dtype"] == "fp32" and "as asked" in fp32["ranker"]["dtype_reason"]


def test_resume_keeps_the_dtype_the_run_started_in(
    monkeypatch, chain_with_candidates, workdir, tiny_llama_dir, tmp_path
):
    config = fast_config(tiny_llama_dir)
    stopped = train_ranker("chain", workdir=workdir, config=config, device="cpu", stop_after_steps=2)
    assert stopped["interrupted"] and stopped["model"]["dtype"] == "fp32"  # conftest's CPU: no fast bf16
    (tmp_path / "cache" / precision.PROBE_FILE).unlink()
    fake_rates(monkeypatch, fp32=300.0, bf16=2000.0)  # measured again, auto now says bf16
    resumed = train_ranker("chain", workdir=workdir, config=config, device="cpu", resume=True)
    assert resumed["model"]["dtype"] == "fp32" and not resumed["interrupted"]


@pytest.mark.parametrize("loss", ["lm", "letters"])
def test_a_step_split_into_passes_has_the_whole_batchs_gradient(llama2_tokenizer_dir, tiny_llama_dir, loss):
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    tokenizer = AutoTokenizer.from_pretrained(llama2_tokenizer_dir)
    encoder = PromptEncoder(tokenizer, load_template(), TITLES)
    scores = [float(-s) for s in range(20)]
    examples = [Example(list(range(1, 2 + 3 * i)), list(range(20, 40)), i, i, scores) for i in range(5)]  # unequal
    grads = []
    lengths = [len(encoder.training_ids(e)[0]) for e in examples]
    uneven = 2 * max(lengths)  # passes of 2, 2 and 1 prompts: each pass's weight is its share of the labels
    assert [len(g) for g in passes(lengths, len(examples), uneven)] == [2, 2, 1]
    for cap in (None, uneven):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)  # B = 0 would give A no gradient
        model.train()
        prior = 1.0 if loss == "letters" else 0.0
        value = accumulate_step(model, Accelerator(cpu=True), encoder, examples, pad_id(tokenizer), cap, loss, prior)
        grads.append((value, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (whole, g1), (split, g2) = grads[0], grads[1]
    torch.testing.assert_close(whole, split, atol=1e-5, rtol=1e-5)
    assert g1.keys() == g2.keys() and all(torch.allclose(g1[n], g2[n], atol=1e-6, rtol=1e-4) for n in g1)


def test_passes_respect_rows_and_tokens():
    lengths = [600, 100, 300, 310, 90, 1500]
    groups = passes(lengths, rows_cap=8, token_cap=1024)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for group in groups:
        assert len(group) == 1 or len(group) * max(lengths[i] for i in group) <= 1024
    assert groups[-1] == [5]  # longer than the cap: a pass of its own
    assert passes(lengths, rows_cap=2, token_cap=None) == [[4, 1], [2, 3], [0, 5]]
    assert pass_token_cap("cpu") == 1024 and pass_token_cap("cuda") is None and pass_token_cap("cpu", 64) == 64
    assert pass_token_cap("cpu", None, 4096) == 4096 and pass_token_cap("cuda", None, 4096) is None
