"""Full-ranking evaluation and top-k export, streaming users in batches and, for a retriever with an item table,
the catalogue in slices.

Only one block of scores (rows x items, at most SCORE_BUDGET floats) exists at a time, so peak memory depends on
neither users x items (the reference kept every user's full score vector) nor, for a retriever that exposes its
queries and item table, on the catalogue's size. On a CPU with fast bf16, a large item table is searched by
``bf16_search`` instead (the same best items, certified; a 256 MiB buffer of bf16 scores). Under ``accelerate
launch`` each process ranks its share of the users and every process gets all the results back, in the users'
order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..evaluation.metrics import KS, MetricSums
from . import bf16_search
from .data import EvalSet, pad_left
from .losses import chunk_size, item_logits

SCORE_BUDGET = 1 << 24  # floats in one block of scores (64 MiB)
MAX_ROWS = 512
CPU_BLOCK_FLOATS = 1 << 20  # on a CPU, a block of an item table's scores (4 MiB) is read again while still in cache


def rows_per_batch(num_items: int) -> int:
    return max(1, min(MAX_ROWS, SCORE_BUDGET // (num_items + 1)))


@dataclass
class Ranked:
    """One batch of users: each target's 1-based rank among the unseen items, and (when asked) the top-k."""

    ranks: torch.Tensor  # B, float64: exact up to max(k, 20) + 1, +inf beyond
    items: torch.Tensor  # B x k item ids (int32), best first; -inf scores where fewer than k items are unseen
    scores: torch.Tensor  # B x k


def _score_blocks(queries, table, bias, scratch: dict):
    """An iterator of (first item id, scores B x items) over the catalogue, one block of items at a time. ``scratch``
    keeps the score buffer from one batch of users to the next."""
    chunk = chunk_size(queries.size(0), table.size(0))
    if queries.device.type == "cpu":
        chunk = max(1, min(chunk, CPU_BLOCK_FLOATS // queries.size(0)))
    # One buffer for every block and batch: a fresh tensor of this size costs page faults that made the matmul 3x
    # slower.
    size = queries.size(0) * min(chunk, table.size(0))
    buffer = scratch.get("scores")
    if buffer is None or buffer.numel() < size or buffer.device != queries.device:
        buffer = scratch["scores"] = torch.empty(size, dtype=torch.float32, device=queries.device)
    queries, table, bias = queries.float(), table.float(), None if bias is None else bias.float()
    for start in range(0, table.size(0), chunk):
        part = slice(start, start + chunk)
        width = table[part].size(0)
        out = buffer[: queries.size(0) * width].view(queries.size(0), width)
        yield start, item_logits(queries, table[part], None if bias is None else bias[part], out=out)


@torch.no_grad()
def _rank_batch(model, histories: list[list[int]], targets: torch.Tensor, k: int, scratch: dict) -> Ranked:
    """Rank one batch of users over the whole catalogue, keeping only each user's best ``max(k, 20) + 1`` items: a
    target's rank is exact (as ``metrics.ranks`` counts it: ties and NaN before the target) whenever it is within
    them, and +inf beyond, which is all the metrics @5/10/20 need. A target in the history, or scored NaN or +inf,
    ranks last. On a CPU with fast bf16 and a large catalogue, bf16_search finds the same best items faster."""
    device = targets.device
    depth = max(k, max(KS)) + 1
    inputs = pad_left([h[-model.config.max_len :] for h in histories]).to(device)
    seen = pad_left(histories).to(device)  # 0 (the padding id) is masked like a seen item
    if model.has_item_table():
        table, bias = model.checked_item_table()
        queries = model.checked_queries(inputs, table.size(1))
        target_scores = (queries * table[targets]).sum(dim=1) + (0 if bias is None else bias[targets])
        target_scores = target_scores.float()
        total = table.size(0)
    else:
        scores = model.checked_score(inputs).float()
        target_scores, total = scores.gather(1, targets[:, None]).squeeze(1), scores.size(1)
    broken = target_scores.isnan() | target_scores.isposinf()
    seen_target = (seen == targets[:, None]).any(dim=1) | (targets == 0)  # 0: the padding id (serving passes it)
    target_scores = target_scores.masked_fill(seen_target, -math.inf)
    if not model.has_item_table():
        best_scores, best_items = _scan(iter([(0, scores)]), targets, target_scores, seen, depth)
    elif scratch.get("bf16_table") is not None:
        found = bf16_search.search(queries, table, bias, scratch["bf16_table"], seen, depth, scratch)
        best_items = found.items
        best_scores = torch.where(best_items == targets[:, None], target_scores[:, None], found.scores)
        again = found.fallback.nonzero().squeeze(1)
        if again.numel():  # scores around zero or NaN: the fp32 scan
            blocks = _score_blocks(queries[again], table, bias, scratch)
            found = _scan(blocks, targets[again], target_scores[again], seen[again], depth)
            best_scores[again], best_items[again] = found
    else:
        blocks = _score_blocks(queries, table, bias, scratch)
        best_scores, best_items = _scan(blocks, targets, target_scores, seen, depth)
    ahead = ((best_scores >= target_scores[:, None]) | best_scores.isnan()).sum(dim=1)
    exact = (ahead < depth) | (total <= depth)  # the whole catalogue was kept, or something ranked below the target
    ranks = torch.where(exact, ahead.double(), math.inf)
    ranks = torch.where(broken, float(total) if total <= depth else math.inf, ranks)  # last, as metrics.ranks has it
    keep = min(k, total - 1)  # the padding id is never a candidate
    return Ranked(ranks, best_items[:, :keep].to(torch.int32), best_scores[:, :keep])


def _scan(blocks, targets, target_scores, seen, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's best ``depth`` (scores, items) over blocks of the catalogue's scores.

    Once a user holds that many items, a block whose best score is below the user's last one (and which does not
    hold the target) cannot change them, so only the other users' rows are masked and searched: after the first
    blocks that is a few rows, and the top-k search, not the matmul, was most of the time."""
    device = targets.device
    best_scores = torch.empty(targets.size(0), 0, device=device)
    best_items = torch.empty(targets.size(0), 0, dtype=torch.long, device=device)
    for start, scores in blocks:
        width = scores.size(1)
        if best_scores.size(1) < depth:  # the first items: every row
            _mask_block(scores, start, targets, target_scores, seen)
            best_scores, best_items = _merged(best_scores, best_items, scores, start, depth)
            continue
        holds_target = (targets >= start) & (targets < start + width)
        rows = (~(scores.amax(dim=1) < best_scores[:, -1]) | holds_target).nonzero().squeeze(1)  # NaN: searched
        if rows.numel() == 0:
            continue
        scores = scores[rows]
        _mask_block(scores, start, targets[rows], target_scores[rows], seen[rows])
        best_scores[rows], best_items[rows] = _merged(best_scores[rows], best_items[rows], scores, start, depth)
    return best_scores, best_items


def _mask_block(scores, start: int, targets, target_scores, seen) -> None:
    """In place, on a block of scores for items ``start``..: the padding id and seen items can never be chosen, and
    each target scores what ``target_scores`` says, whatever the route."""
    width = scores.size(1)
    index = torch.arange(scores.size(0), device=scores.device)
    if start == 0:
        scores[:, 0] = -math.inf  # the padding id, even when no history in the batch needs padding
    local = targets - start
    here = (local >= 0) & (local < width)
    scores[index[here], local[here]] = target_scores[here]
    local = seen - start
    inside = (local >= 0) & (local < width)
    scores[index[:, None].expand_as(seen)[inside], local[inside]] = -math.inf


def _merged(kept_scores, kept_items, scores, start: int, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``depth`` of the kept items and a masked block of items ``start``.., best first."""
    top = scores.topk(min(depth, scores.size(1)), dim=1)
    merged = torch.cat([kept_scores, top.values], dim=1)
    order = merged.topk(min(depth, merged.size(1)), dim=1).indices  # NaN first, as a rank counts it
    items = torch.cat([kept_items, top.indices + start], dim=1)
    return merged.gather(1, order), items.gather(1, order)


def ranked_batches(model, data: EvalSet, device, k: int = 0) -> Iterator[tuple[list[int], Ranked]]:
    """(rows of ``data``, their ranks and top-k) per batch of users, shortest histories first: a batch is padded to
    its longest input, and most users of a power-law dataset have a few items. The model is in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    try:
        size = MAX_ROWS if model.has_item_table() else rows_per_batch(model.num_items)
        scratch = {}
        if model.has_item_table():
            with torch.no_grad():
                table, bias = model.checked_item_table()
            if bf16_search.worth_it(table):
                scratch["bf16_table"] = bf16_search.prepare(table, bias)
                size = bf16_search.ROWS
        max_len = model.config.max_len
        order = sorted(range(len(data)), key=lambda row: min(len(data.histories[row]), max_len))
        for start in range(0, len(data), size):
            rows = order[start : start + size]
            targets = torch.as_tensor([data.targets[r] for r in rows], dtype=torch.long, device=device)
            yield rows, _rank_batch(model, [data.histories[r] for r in rows], targets, k, scratch)
    finally:
        model.train(was_training)


def _ranked(model, data: EvalSet, device, k: int, accelerator=None) -> Ranked:
    """Every user's rank and top-k, in the users' order; under several processes, each ranks a contiguous share
    and all get all."""
    share, sizes = data, [len(data)]
    if accelerator is not None and accelerator.num_processes > 1:
        sizes = share_sizes(len(data), accelerator.num_processes)
        share = shard(data, accelerator.process_index, accelerator.num_processes)
    width = min(k, model.num_items)
    ranked = Ranked(torch.zeros(len(share), dtype=torch.float64), torch.zeros(len(share), width, dtype=torch.int32),
                    torch.zeros(len(share), width))  # fmt: skip
    for rows, part in ranked_batches(model, share, device, k):
        index = torch.as_tensor(rows)
        ranked.ranks[index], ranked.items[index], ranked.scores[index] = (
            part.ranks.cpu(),
            part.items.cpu(),
            part.scores.cpu(),
        )
    if share is data:
        return ranked
    return Ranked(*(gather_rows(accelerator, t, sizes) for t in (ranked.ranks, ranked.items, ranked.scores)))


def share_sizes(users: int, count: int) -> list[int]:
    """How many users each of ``count`` processes ranks: contiguous, near-equal shares."""
    return [users * (i + 1) // count - users * i // count for i in range(count)]


def shard(data: EvalSet, index: int, count: int) -> EvalSet:
    """The ``index``-th of ``count`` contiguous, near-equal shares of the users."""
    sizes = share_sizes(len(data), count)
    part = slice(sum(sizes[:index]), sum(sizes[: index + 1]))
    return EvalSet(data.split, data.users[part], data.histories[part], data.targets[part])


def gather_rows(accelerator, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The processes' row blocks (``sizes`` rows each) concatenated in process order; blocks differ by at most
    one row, so each is padded to the largest to send."""
    if tensor.dim() > 1 and tensor.size(1) == 0:  # no top-k asked for (the same in every process): nothing to send
        return torch.zeros((sum(sizes), *tensor.shape[1:]), dtype=tensor.dtype)
    rows = sizes[accelerator.process_index]
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=accelerator.device)
    padded[:rows] = tensor
    gathered = accelerator.gather(padded).reshape(len(sizes), max(sizes), *tensor.shape[1:])
    return torch.cat([block[:size] for block, size in zip(gathered, sizes)]).cpu()


def evaluate(model, data: EvalSet, device, accelerator=None) -> dict[str, float]:
    """MRR/NDCG/Recall @5/10/20, exact averages over the users of ``data``."""
    sums = MetricSums()
    sums.add(_ranked(model, data, device, 0, accelerator).ranks.cpu())
    return sums.result()


def top_k(model, data: EvalSet, device, k: int, accelerator=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Top-k item ids and scores per user (score order) and the full-ranking metrics, in one pass."""
    ranked = _ranked(model, data, device, k, accelerator)
    sums = MetricSums()
    sums.add(ranked.ranks.cpu())
    return ranked.items.cpu(), ranked.scores.cpu(), sums.result()
