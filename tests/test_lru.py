"""LRURec: the parallel scan against a plain recurrence, gradients, and padding independence."""

from __future__ import annotations

import pytest
import torch

from llamarec_cli.retrieval.lru import LRURec, LRURecConfig, parallel_scan


def sequential(u, lamb, mask):
    """The recurrence written plainly, as the reference computes it: no carry out of a padding position, which holds
    its own input; the state starts afresh at each row's first real position."""
    batch, length, dim = u.shape
    out = torch.zeros_like(u)
    for b in range(batch):
        h = torch.zeros(dim, dtype=u.dtype)
        for t in range(length):
            h = lamb * h + u[b, t] if mask[b, t] else torch.zeros(dim, dtype=u.dtype)
            out[b, t] = h if mask[b, t] else u[b, t]
    return out


@pytest.mark.parametrize("length", [1, 2, 8, 13, 64, 200])
def test_parallel_scan_equals_the_sequential_recurrence_with_left_padding(length):
    torch.manual_seed(length)
    batch, dim = 5, 6
    u = torch.randn(batch, length, dim, dtype=torch.cfloat)
    radius = torch.empty(dim).uniform_(0.8, 0.99)
    lamb = torch.polar(radius, torch.rand(dim) * 6.28)
    real = torch.tensor([length, length // 2, 1, 0, max(length - 3, 0)])
    mask = torch.arange(length).unsqueeze(0) >= (length - real).unsqueeze(1)  # left padding
    expected = sequential(u, lamb, mask)
    got = parallel_scan(u, lamb, mask)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_the_scans_own_backward_pass_is_its_gradient():
    torch.manual_seed(0)
    u = torch.randn(3, 11, 2, dtype=torch.cdouble, requires_grad=True)
    lamb = torch.polar(torch.tensor([0.9, 0.5], dtype=torch.double), torch.tensor([1.0, -2.0], dtype=torch.double))
    lamb.requires_grad_()
    mask = torch.arange(11).unsqueeze(0) >= torch.tensor([[0], [4], [10]])  # 11, 7 and 1 real positions
    assert torch.autograd.gradcheck(lambda u, lamb: parallel_scan(u, lamb, mask), (u, lamb))


def test_gradients_flow_through_the_scan_and_the_model():
    torch.manual_seed(0)
    u = torch.randn(2, 16, 4, dtype=torch.cfloat, requires_grad=True)
    lamb_log = torch.zeros(4, requires_grad=True)
    lamb = torch.polar(0.9 * torch.exp(lamb_log), torch.ones(4))
    mask = torch.ones(2, 16, dtype=torch.bool)
    parallel_scan(u, lamb, mask).abs().sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad.real).all() and u.grad.abs().sum() > 0
    assert lamb_log.grad is not None and lamb_log.grad.abs().sum() > 0

    model = LRURec(LRURecConfig(hidden=8), num_items=30)
    items = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    model.score(items).logsumexp(-1).sum().backward()
    for name, param in model.named_parameters():
        assert (
            param.grad is not None
            and torch.isfinite(torch.view_as_real(param.grad) if param.is_complex() else param.grad).all()
        ), name
    assert model.blocks[0].lru.params_log.grad.abs().sum() > 0
    assert not any(param.is_complex() for param in model.parameters())  # safetensors-friendly


def test_left_padding_does_not_change_the_output():
    torch.manual_seed(1)
    model = LRURec(LRURecConfig(hidden=16), num_items=50).eval()
    history = torch.tensor([[7, 3, 9, 12, 1]])
    padded = torch.tensor([[0, 0, 0, 0, 0, 7, 3, 9, 12, 1]])  # also pads 5 -> 8 vs 10 -> 16 for the scan
    with torch.no_grad():
        assert torch.allclose(model(history)[:, -1], model(padded)[:, -1], atol=1e-5)


def test_initialisation_follows_the_method():
    model = LRURec(LRURecConfig(hidden=64), num_items=1000)
    weights = model.embedding.weight
    assert weights.abs().max() <= 0.04 and 0.012 < weights.std() < 0.02  # truncated at +-2 std
    assert torch.equal(model.embedding_layer_norm.weight, torch.ones(64))
    lamb = model.blocks[0].lru.lamb()
    assert lamb.abs().min() >= 0.8 - 1e-6 and lamb.abs().max() <= 0.99 + 1e-6
    gamma = torch.exp(model.blocks[0].lru.params_log[2])
    assert torch.allclose(gamma, torch.sqrt(1 - lamb.abs() ** 2), atol=1e-6)


def test_config_is_validated():
    with pytest.raises(ValueError, match="dropout"):
        LRURecConfig(dropout=1.5)
