"""Causal attention for scoring prompts on a CPU in bf16: a query block at a time, by matrix multiplies.

PyTorch's fused CPU attention kernel is slow in bf16 on a CPU without AMX: one 999-token SmolLM2 pass spent 411 of its
919 ms there (AMD EPYC with AVX512-BF16, 2 threads, torch 2.13), about 85 GFLOP/s, where the model's linear layers
multiply at about 520. Done as multiplies (QK^T, softmax, PV) a block of query rows at a time, attention runs at the
multiply rate and skips the key blocks the causal mask hides entirely, a bf16 PV pass and the scores rounded to bf16
before the softmax, as transformers' own eager attention does in bf16. It serves passes without gradients (scoring,
rank-train's validations); training and decoding keep SDPA. Whether it is faster depends on the CPU (PyTorch's
fused kernel uses AMX where there is some), so both are timed once per machine, cached beside precision.py's probe,
and the blocks are used only where they are clearly faster (``benchmarks/results/attention.md``)."""

from __future__ import annotations

import time

import torch

NAME = "llamarec_cpu_blocks"
BLOCK = 256  # query rows a multiply: fewer is more Python calls, more is more memory traffic per softmax
MIN_QUERIES = 2 * BLOCK  # shorter passes gain too little to leave the fused kernel
FASTER = 0.8  # the blocks are used where they take at most this share of the fused kernel's time


def pays_here() -> bool:
    """Whether bf16 scoring on this CPU should use the blocks: measured once per machine (``probed_times``)."""
    probe = probed_times()
    return probe["attention_blocks_ms"] <= FASTER * probe["attention_sdpa_ms"]


def probed_times() -> dict:
    """One bf16 attention's time (ms) each way on this machine, measured once and cached with the dtype probe."""
    from ..precision import cached_measurements

    return cached_measurements(
        {"attention_sdpa_ms": lambda: attention_ms("sdpa"), "attention_blocks_ms": lambda: attention_ms("blocks")}
    )


def attention_ms(kind: str, tokens: int = 1024, heads: int = 9, dim: int = 64, rounds: int = 3) -> float:
    """The best of ``rounds`` timings (ms) of one causal bf16 attention over ``tokens`` (SmolLM2's heads), by SDPA's
    fused kernel (``kind`` "sdpa") or by ``blockwise_attention`` ("blocks")."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = (torch.randn(1, heads, tokens, dim, dtype=torch.bfloat16) for _ in range(3))
    attend = {"sdpa": sdpa_attention_forward, "blocks": blockwise_attention}[kind]
    module = SimpleNamespace(num_key_value_groups=1, is_causal=True)
    best = float("inf")
    with torch.no_grad():
        attend(module, q, k, v, None)  # the first call picks and warms the kernels
        for _ in range(rounds):
            began = time.perf_counter()
            attend(module, q, k, v, None)
            best = min(best, time.perf_counter() - began)
    return 1000 * best


def register() -> str:
    """Make ``NAME`` an attention implementation transformers knows (masks as for SDPA); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, blockwise_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def blockwise_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention interface: query (batch, heads, q, dim), key and value (batch, kv heads, k, dim),
    ``attention_mask`` None (causal) or boolean (batch, 1, q, k), True where a query may look; returns the output as
    (batch, q, heads, dim) and no weights."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    queries = query.shape[2]
    if (
        torch.is_grad_enabled()
        or query.device.type != "cpu"
        or query.dtype != torch.bfloat16
        or queries < MIN_QUERIES
        or dropout
        or any(kwargs.get(extra) is not None for extra in ("position_bias", "softcap", "s_aux", "sliding_window"))
        or kwargs.get("is_causal", getattr(module, "is_causal", True)) is False
        or (attention_mask is not None and attention_mask.dtype != torch.bool)
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    offset = key.shape[2] - queries  # keys before the first query (a cached prefix); 0 when scoring a prompt
    hidden = torch.finfo(query.dtype).min  # finite: a padding row that sees nothing stays a number, not NaN
    query = query * scaling  # scaled once here, not each block's scores
    output = torch.empty_like(query)
    for start in range(0, queries, BLOCK):
        end = min(start + BLOCK, queries)
        seen = offset + end  # the keys any query of this block may see
        scores = torch.matmul(query[:, :, start:end], key[:, :, :seen].transpose(-1, -2))
        if attention_mask is None:  # causal: only the block's own square hides keys (those after each row)
            square = torch.ones(end - start, end - start, dtype=torch.bool).triu_(1)
            scores[..., offset + start :].masked_fill_(square, hidden)
        else:
            scores.masked_fill_(~attention_mask[:, :, start:end, :seen], hidden)
        probabilities = torch.softmax(scores, dim=-1)
        output[:, :, start:end] = torch.matmul(probabilities, value[:, :, :seen])
    return output.transpose(1, 2).contiguous(), None
