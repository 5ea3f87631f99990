"""Ranking metrics with one ground-truth item per user (METHOD.md §6), averaged exactly over users.

For the rank r (1-based) of the true item: Recall@k = 1 if r <= k; MRR@k = 1/r if r <= k; NDCG@k = 1/log2(r + 1)
if r <= k. Ties are counted against the true item (an item with the same score ranks before it), so a model that
scores everything alike gets the worst rank, never the best. Likewise a non-finite score (NaN, +inf: a diverged model)
counts against it: the true item with such a score ranks last, and any other item with a NaN score ranks before it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch

KS = (5, 10, 20)
NAMES = ("MRR", "NDCG", "Recall")


def mask_history(scores: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Set the padding id 0 and every item of each user's history (B x L, 0-padded) to -inf, in place."""
    scores[:, 0] = -math.inf
    return scores.scatter_(1, history.long(), -math.inf)


def ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target among its scores (B x N); ties and NaN rank before the target, and a target
    whose own score is NaN or +inf ranks last (a comparison with NaN is false: it would otherwise count as rank 0)."""
    target_scores = scores.gather(1, targets.long().view(-1, 1))
    better_or_tied = ((scores >= target_scores) | scores.isnan()).sum(dim=1)
    broken = target_scores.squeeze(1).isnan() | target_scores.squeeze(1).isposinf()
    return torch.where(broken, scores.shape[1], better_or_tied).to(torch.float64)


def metrics_at(rank: torch.Tensor, ks=KS) -> dict[str, torch.Tensor]:
    """Per-user metric values for each k: {"NDCG@10": tensor(B), ...}."""
    out = {}
    for k in ks:
        hit = rank <= k
        out[f"MRR@{k}"] = torch.where(hit, 1.0 / rank, 0.0)
        out[f"NDCG@{k}"] = torch.where(hit, 1.0 / torch.log2(rank + 1), 0.0)
        out[f"Recall@{k}"] = hit.to(torch.float64)
    return out


def paired_difference(ranker: list[float], retriever: list[float], k: int = 10, metric: str = "NDCG") -> dict:
    """First order minus second in NDCG@k (or another metric) over the same users' ranks, with a 95% interval
    (normal, paired): whether a gain on a subset of a few hundred users is more than chance. Used for a ranker
    against its retriever's order, and for one retriever run against another."""

    def per_user(ranks: list[float]):
        return metrics_at(torch.tensor(ranks, dtype=torch.float64), ks=(k,))[f"{metric}@{k}"]

    diffs = (per_user(ranker) - per_user(retriever)).tolist()
    half = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None  # JSON has no NaN
    return {
        "metric": f"{metric}@{k}",
        "difference": statistics.fmean(diffs) if diffs else 0.0,
        "half_width": half,
        "users": len(diffs),
        "better": sum(a < b for a, b in zip(ranker, retriever)),
        "worse": sum(a > b for a, b in zip(ranker, retriever)),
    }


@dataclass
class MetricSums:
    """Sums per metric across batches; ``result()`` divides by the number of users (not of batches)."""

    ks: tuple[int, ...] = KS
    users: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, rank: torch.Tensor) -> None:
        self.users += rank.numel()
        for name, values in metrics_at(rank, self.ks).items():
            self.sums[name] = self.sums.get(name, 0.0) + float(values.sum())

    def result(self) -> dict[str, float]:
        if not self.users:
            return {}
        return {name: total / self.users for name, total in self.sums.items()}
