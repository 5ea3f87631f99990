"""Which ranking requests the ranker trains and is evaluated on (METHOD.md §5).

Training (the reference): every prefix of a user's training sequence with at least two items gives one example,
history = the prefix without its last item, candidates = that item plus 19 items drawn uniformly from the items not
in the prefix, shuffled. ``negatives="retrieved"`` instead shows the retriever's own top-k for the prefix, in its
score order, keeping the prefixes whose true item is among them: the same kind of request evaluation shows, so the
two can be compared (the train/test shift the paper leaves open).

Evaluation: the validation or test users whose true item is among the retriever's exported candidates (the valid
retrieval subset), candidates in retriever score order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from .config import check_negatives
from .prompts import Example


@dataclass
class Subset:
    """The valid retrieval subset of one split, and how large the split is."""

    split: str
    examples: list[Example]
    users: int  # all users of the split, in the subset or not

    @property
    def hit_rate(self) -> float:
        return len(self.examples) / self.users if self.users else 0.0


def prefixes(train: dict[int, list[int]]) -> list[tuple[int, int]]:
    """(user, i): history train[user][:i], target train[user][i], for every i >= 1."""
    return [(user, i) for user, seq in train.items() for i in range(1, len(seq))]


def random_negative_examples(
    train: dict[int, list[int]], num_items: int, k: int, chosen: list[tuple[int, int]], seed: int
) -> list[Example]:
    rng = np.random.default_rng(seed)
    examples = []
    for user, i in chosen:
        seq = train[user]
        seen = set(seq[: i + 1])
        if num_items - len(seen) < k - 1:
            continue  # the user has seen nearly everything: not enough negatives to draw
        negatives: list[int] = []
        while len(negatives) < k - 1:
            for item in rng.integers(1, num_items + 1, size=2 * k).tolist():
                if item not in seen and item not in negatives:
                    negatives.append(item)
                    if len(negatives) == k - 1:
                        break
        candidates = negatives + [seq[i]]
        rng.shuffle(candidates)
        examples.append(Example(seq[:i], candidates, candidates.index(seq[i]), user))
    return examples


def retrieved_examples(
    train: dict[int, list[int]], retriever, k: int, chosen: list[tuple[int, int]], device
) -> list[Example]:
    from ..retrieval.data import EvalSet
    from ..retrieval.evaluate import top_k

    data = EvalSet("train", [u for u, _ in chosen], [train[u][:i] for u, i in chosen], [train[u][i] for u, i in chosen])
    items, scores, _ = top_k(retriever, data, device, k)
    examples = []
    for user, history, target, row, values in zip(data.users, data.histories, data.targets, items.tolist(), scores):
        if target in row:
            examples.append(Example(history, row, row.index(target), user, values.tolist()))
    return examples


def training_examples(
    dataset,
    *,
    k: int,
    negatives: str = "random",
    max_examples: int | None = None,
    seed: int = 42,
    retriever=None,
    device="cpu",
    shuffle: bool = False,
) -> list[Example]:
    """The training requests, in a seeded random order; at most ``max_examples`` of them. ``shuffle``: retrieved
    candidates in a seeded random order rather than the retriever's (random negatives are always shuffled)."""
    check_negatives(negatives)
    if negatives == "validation":
        raise ValueError("validation requests come from the candidates file: stages.rank_train.held_out_training_set")
    train = dataset.sequences("train")
    pairs = prefixes(train)
    order = np.random.default_rng(seed).permutation(len(pairs))
    if negatives == "random":
        chosen = [pairs[j] for j in order[:max_examples]]
        return random_negative_examples(train, dataset.num_items, k, chosen, seed)
    # Retrieved: only prefixes whose true item the retriever finds count, so score chunks until there are enough.
    examples: list[Example] = []
    want = max_examples or len(pairs)
    chunk = max(4 * want, 1024) if max_examples else len(pairs)
    for start in range(0, len(pairs), chunk):
        chosen = [pairs[j] for j in order[start : start + chunk]]
        examples += retrieved_examples(train, retriever, k, chosen, device)
        if len(examples) >= want:
            break
    examples = examples[:want]
    if shuffle:
        shuffle_candidates(examples, seed)
    return examples


def shuffle_candidates(examples: list[Example], seed: int) -> None:
    """Show each example's candidates (and their retriever scores) in a seeded random order, in place."""
    rng = np.random.default_rng(seed)
    for e in examples:
        target, where = e.candidates[e.target_index], rng.permutation(len(e.candidates))
        e.candidates = [e.candidates[i] for i in where]
        e.retriever_scores = [e.retriever_scores[i] for i in where] if e.retriever_scores else None
        e.target_index = e.candidates.index(target)


def valid_subset(dataset, candidates: pl.DataFrame, split: str, k: int | None = None) -> Subset:
    """The users of ``split`` whose true item is among their first ``k`` candidates, candidates in score order."""
    train = dataset.sequences("train")
    val = dataset.sequences("val") if split == "test" else {}
    rows = candidates.filter(pl.col("split") == split)
    examples = []
    for user, target, items, scores in rows.select("user", "target", "candidates", "scores").iter_rows():
        items, scores = (items[:k], scores[:k]) if k else (items, scores)
        if target in items:
            history = train.get(user, []) + val.get(user, [])
            examples.append(Example(history, items, items.index(target), user, scores))
    return Subset(split, examples, rows.height)
