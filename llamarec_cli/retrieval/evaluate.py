"""Full-ranking evaluation and top-k export, streaming users in batches.

Only one batch of scores (rows x items) exists at a time, and its row count shrinks as the item count grows, so
peak memory does not depend on users x items (the reference kept every user's full score vector).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..evaluation.metrics import MetricSums, mask_history, ranks
from .data import EvalSet, pad_left

SCORE_BUDGET = 1 << 24  # floats in one batch of scores (64 MiB)
MAX_ROWS = 512


def rows_per_batch(num_items: int) -> int:
    return max(1, min(MAX_ROWS, SCORE_BUDGET // (num_items + 1)))


@torch.no_grad()
def scored_batches(model, data: EvalSet, device) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """(rows, masked scores B x (N+1), targets B) per batch: history and padding scored -inf."""
    was_training = model.training
    model.eval()
    try:
        step = rows_per_batch(model.num_items)
        max_len = model.config.max_len
        for start in range(0, len(data), step):
            rows = slice(start, start + step)
            histories = data.histories[rows]
            inputs = pad_left([h[-max_len:] for h in histories]).to(device)
            scores = model.score(inputs).float()
            mask_history(scores, pad_left(histories).to(device))
            yield rows, scores, torch.as_tensor(data.targets[rows], device=device)
    finally:
        model.train(was_training)


def evaluate(model, data: EvalSet, device) -> dict[str, float]:
    """MRR/NDCG/Recall @5/10/20, exact averages over the users of ``data``."""
    sums = MetricSums()
    for _, scores, targets in scored_batches(model, data, device):
        sums.add(ranks(scores, targets).cpu())
    return sums.result()


def top_k(model, data: EvalSet, device, k: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Top-k item ids and scores per user (score order) and the full-ranking metrics, in one pass."""
    sums = MetricSums()
    items, values = [], []
    for _, scores, targets in scored_batches(model, data, device):
        sums.add(ranks(scores, targets).cpu())
        best = scores.topk(min(k, scores.size(1) - 1), dim=1)
        items.append(best.indices.cpu().to(torch.int32))
        values.append(best.values.cpu())
    if not items:
        return torch.zeros(0, k, dtype=torch.int32), torch.zeros(0, k), {}
    return torch.cat(items), torch.cat(values), sums.result()
