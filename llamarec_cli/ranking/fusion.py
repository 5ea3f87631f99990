"""Score fusion: the final order combines the ranker's letter logits with the retriever's scores (not in the paper).

    score = α · log_softmax(letter logits) + (1 − α) · log_softmax(retriever scores over the same candidates)

α = 1 is the ranker alone, α = 0 the retriever's own order. α is chosen by NDCG@10 on the validation subset, over
``GRID``, with the best adapter's validation scores, and stored in the ranker's manifest; nothing about the test users
is used. Orders are total: equal scores keep the order shown (the retriever's), so α = 0 reproduces the retriever's
order exactly and a ranker that cannot tell two candidates apart leaves them as the retriever had them, as serving
does.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..evaluation.metrics import metrics_at

GRID = tuple(round(i / 20, 2) for i in range(21))  # 0, 0.05, ..., 1
CHOICES = "auto (the α rank-train chose on validation), none (the ranker alone) or a number from 0 to 1"


def fuse(letter_scores: torch.Tensor, retriever_scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """The fused scores of one request's candidates (float64); α = 1 and α = 0 return either side alone."""
    return _blend(*_log_probabilities(letter_scores, retriever_scores), alpha)


def _log_probabilities(letter_scores, retriever_scores) -> tuple[torch.Tensor, torch.Tensor | None]:
    letters = torch.log_softmax(_finite(letter_scores), dim=-1)
    return letters, None if retriever_scores is None else torch.log_softmax(_finite(retriever_scores), dim=-1)


def _blend(letters: torch.Tensor, retriever: torch.Tensor | None, alpha: float) -> torch.Tensor:
    if alpha >= 1:
        return letters
    if alpha <= 0 or letters.isnan().all():  # no finite letter logit (e.g. an fp16 overflow): the retriever decides
        return retriever
    return alpha * letters + (1 - alpha) * retriever


def retriever_log_probabilities(scores) -> torch.Tensor:
    """log_softmax of one request's retriever scores (float32), as fusion uses them, for a training loss: kept
    finite (a candidate without a score gets a very low one; a request without any, a flat prior)."""
    return torch.log_softmax(_finite(scores), dim=-1).nan_to_num(nan=0.0, neginf=-1e4).float()


def _finite(scores) -> torch.Tensor:
    """float64, NaN as -inf: a candidate without a score goes last (α = 0 and 1 never multiply an -inf by 0);
    +inf becomes the largest float, so log_softmax stays defined."""
    return torch.as_tensor(scores, dtype=torch.float64).nan_to_num(nan=-math.inf, neginf=-math.inf)


def order(scores: torch.Tensor) -> list[int]:
    """Candidate indices, best first; ties (and NaN, last) keep the order shown."""
    s = torch.as_tensor(scores, dtype=torch.float64).nan_to_num(nan=-math.inf)
    return torch.sort(-s, stable=True).indices.tolist()


def rank(scores: torch.Tensor, target_index: int) -> float:
    """1-based place of the true candidate in ``order(scores)``; a non-finite score of its own ranks it last."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    if not math.isfinite(float(s[target_index])):
        return float(len(s))
    target = s[target_index]
    before = (s[:target_index] >= target).sum() + (s[target_index + 1 :] > target).sum()
    return float(before) + 1.0


def fused_ranks(examples, letter_scores: list[torch.Tensor], alpha: float) -> list[float]:
    """The true candidates' ranks in the fused order of each request."""
    return [
        rank(fuse(s, e.retriever_scores, alpha), e.target_index) for e, s in zip(examples, letter_scores, strict=True)
    ]


def ndcg_at_10(ranks: list[float]) -> float:
    if not ranks:
        return 0.0
    return float(metrics_at(torch.tensor(ranks, dtype=torch.float64), ks=(10,))["NDCG@10"].mean())


def choose_alpha(examples, letter_scores: list[torch.Tensor], grid=GRID) -> dict:
    """The α of ``grid`` with the best validation NDCG@10; ties go to the α nearest 0.5 (a blend hedges both)."""
    if any(e.retriever_scores is None for e in examples):
        raise ValueError("fusion needs the retriever's scores of every validation request")
    sides = [_log_probabilities(s, e.retriever_scores) for e, s in zip(examples, letter_scores, strict=True)]
    curve = {
        alpha: ndcg_at_10([rank(_blend(*side, alpha), e.target_index) for side, e in zip(sides, examples)])
        for alpha in grid
    }
    best = max(curve.values())
    alpha = min((a for a, v in curve.items() if v == best), key=lambda a: (abs(a - 0.5), a))
    return {
        "alpha": alpha,
        "metric": "NDCG@10",
        "users": len(examples),
        "val": {f"{a:g}": round(v, 6) for a, v in curve.items()},
    }


def resolve_alpha(fusion: str | float | None, stored: dict | None) -> tuple[float | None, str]:
    """The α to use and where it came from: ``fusion`` is auto, none or a number in [0, 1]; ``stored`` is the ranker
    manifest's ``fusion`` entry (None for zero-shot rankers and rankers trained before llamarec tuned α)."""
    if fusion is None or fusion == "auto":
        if stored and "alpha" in stored:
            return float(stored["alpha"]), f"chosen on {stored['users']:,} validation users"
        return None, "none stored with this ranker"
    if fusion == "none":
        if stored and stored.get("trained_alpha"):
            return None, "--fusion none; this ranker was trained beside the retriever's scores, to be read fused"
        return None, "--fusion none"
    try:
        alpha = float(fusion)
    except ValueError:
        raise ConfigError(f"--fusion must be {CHOICES}; got '{fusion}'.") from None
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--fusion must be {CHOICES}; got {fusion}.")
    return alpha, "given"
