"""Blockwise bf16 attention for CPU scoring: the attention of SDPA's fused kernel, used where measured faster."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from llamarec_cli.ranking import attention
from llamarec_cli.ranking.models import load_model


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 16 query rows from 32 queries on: short test prompts take the blockwise path, over several blocks."""
    monkeypatch.setattr(attention, "BLOCK", 16)
    monkeypatch.setattr(attention, "MIN_QUERIES", 32)


def qkv(batch=2, heads=4, kv_heads=2, queries=70, keys=70, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, queries, dim, generator=g)
    k, v = (torch.randn(batch, kv_heads, keys, dim, generator=g) for _ in range(2))
    return q, k, v


def reference(q, k, v, mask):
    """fp32 attention by the definition: softmax(QK^T / sqrt(d) + mask) V, the key/value heads shared in groups."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v


def causal(batch, queries, keys, padding=(0, 0)):
    """sdpa's boolean mask (True: may look), queries at the last positions, each row's first ``padding`` keys hidden."""
    rows = torch.arange(keys - queries, keys).unsqueeze(1)
    mask = (torch.arange(keys) <= rows).expand(batch, 1, queries, keys).clone()
    for b, pad in enumerate(padding):
        mask[b, :, :, :pad] = False
    return mask


@pytest.mark.parametrize(
    "keys, padding, given_mask",
    [(70, (0, 0), False), (70, (0, 23), True), (90, (0, 0), False)],
    ids=["causal", "left-padded", "cached-prefix"],
)
def test_the_blocks_compute_attention_as_the_fused_kernel_does(small_blocks, keys, padding, given_mask):
    q, k, v = qkv(keys=keys)
    mask = causal(2, 70, keys, padding)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    bf16 = [t.bfloat16() for t in (q, k, v)]
    with torch.no_grad():
        blocks, _ = attention.blockwise_attention(module, *bf16, mask if given_mask else None)
        fused = F.scaled_dot_product_attention(*bf16, attn_mask=mask, enable_gqa=True).transpose(1, 2)
    exact = reference(q, k, v, mask).transpose(1, 2)
    seen = mask.any(-1).squeeze(1)  # rows of padding see nothing: their output is not read
    assert blocks.shape == exact.shape and blocks.dtype == torch.bfloat16 and torch.isfinite(blocks).all()
    error = (blocks.float() - exact)[seen].abs().max()
    fused_error = (fused.float() - exact)[seen].abs().max()
    assert error <= max(2 * fused_error, 0.02), (error, fused_error)


def test_training_decoding_and_fp32_keep_the_fused_kernel(small_blocks, monkeypatch):
    """Gradients (rank-train's steps), one query (decoding), non-causal or windowed attention and fp32 go to SDPA
    unchanged."""
    from transformers.integrations import sdpa_attention

    q, k, v = (t.bfloat16() for t in qkv(kv_heads=4))
    module = SimpleNamespace(num_key_value_groups=1, is_causal=True)
    fused = sdpa_attention.sdpa_attention_forward(module, q, k, v, None)[0]
    trained = attention.blockwise_attention(module, q.requires_grad_(), k, v, None)[0]
    assert torch.equal(trained, fused) and trained.requires_grad
    with torch.no_grad():
        decoding = attention.blockwise_attention(module, q[:, :, -1:], k, v, None)[0]
        assert torch.equal(decoding, sdpa_attention.sdpa_attention_forward(module, q[:, :, -1:], k, v, None)[0])
        for extra in ({"is_causal": False}, {"sliding_window": 16}):  # other attentions than causal: SDPA's
            assert torch.equal(
                attention.blockwise_attention(module, q, k, v, None, **extra)[0],
                sdpa_attention.sdpa_attention_forward(module, q, k, v, None, **extra)[0],
            )
        q32, k32, v32 = qkv(kv_heads=4)
        assert torch.equal(
            attention.blockwise_attention(module, q32, k32, v32, None)[0],
            sdpa_attention.sdpa_attention_forward(module, q32, k32, v32, None)[0],
        )


@pytest.mark.parametrize("blocks_ms, chosen", [(5.0, True), (9.0, False)])
def test_the_blocks_are_used_where_the_probe_measured_them_faster(
    small_blocks, monkeypatch, tiny_llama_dir, blocks_ms, chosen
):
    monkeypatch.setattr(attention, "attention_ms", lambda kind, **kw: {"sdpa": 10.0, "blocks": blocks_ms}[kind])
    model = load_model(str(tiny_llama_dir), device="cpu", dtype="bf16").model
    assert (model.config._attn_implementation == attention.NAME) is chosen
    if not chosen:
        return
    assert load_model(str(tiny_llama_dir), device="cpu", dtype="fp32").model.config._attn_implementation == "sdpa"
    # a left-padded batch of prompts scores as with SDPA
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (3, 80), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :30] = 0
    mask[2, :5] = 0
    with torch.no_grad():
        blocks = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1].float()
        model.set_attn_implementation("sdpa")
        fused = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1].float()
    assert torch.isfinite(blocks).all()
    assert (blocks - fused).abs().max() <= 0.05 * fused.abs().max(), (blocks - fused).abs().max()
    assert (blocks.argmax(-1) == fused.argmax(-1)).all()
