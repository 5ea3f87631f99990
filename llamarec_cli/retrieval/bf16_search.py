"""Each user's exact fp32 best items of a large item table, found at bf16 speed on a CPU that multiplies bf16 fast.

Every score is first computed in bf16 (AMX and AVX512-BF16 multiply it several times faster than fp32), only to find
a short list per user that provably holds the fp32 best ``depth`` items; the short list is then scored in fp32, so
the result is the fp32 search's (up to the rounding of the fp32 dot products themselves).

Why the short list is enough. A bf16 score B and the fp32 score E of the same item differ by at most e + u·|B|, where
e covers the rounding of the query and the item to bf16 (measured: ‖q16 - q‖·max‖v‖ + ‖q‖·max‖v16 - v‖ + ...) and
fp32 accumulation, and u·|B| the rounding of the result to bf16. Per segment of ``SEGMENT`` items only the bf16
maximum is kept. If m ≥ 0 is a user's ``depth``-th largest segment maximum, ``depth`` items score B ≥ m, hence
E ≥ L = m(1 - u) - e, so the fp32 ``depth``-th best is at least L; an item with B < t = (m(1 - u) - 2e) / (1 + u)
scores E < L and cannot be among the best. So only items with B ≥ t are kept (t from the segments seen so far,
which only grows), and scored in fp32.

Speed: the maxima are taken on the scores' bits as int16, which order like the values for non-negative numbers (an
integer reduction is fast; a bf16 one converts every element). Most of the rest of the time goes to items kept only
because the threshold was still low, so the first block is large. A user whose threshold is negative (scores
around zero, or NaN) cannot be compared that way and is searched again in fp32 by the caller, as is one left with
fewer than ``depth`` items, and every user when the first block holds fewer than ``depth`` segments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ROWS = 1024  # users per search: the per-block steps cost about the same for more of them
SEGMENT = 128  # items per segment maximum (the threshold's unit)
FINE = 32  # items per small segment (a multiple of it is SEGMENT): to find the items of a segment cheaply
CHUNK_ITEMS = 1 << 12  # items scored in one multiply: R x CHUNK_ITEMS scores stay in cache (a multiple of SEGMENT)
FIRST_BLOCK_ITEMS = 1 << 17  # items before the first threshold (a multiple of CHUNK_ITEMS)
BLOCK_ITEMS = 1 << 16  # items between two updates of the threshold (a multiple of CHUNK_ITEMS)
MIN_ITEMS = 1 << 16  # below this, the fp32 scan is about as fast and simpler
ROUNDING = 2**-8 / (1 - 2**-8) * 1.01  # u: bf16 keeps 8 significant bits, rounding to nearest
MASKED = -32768  # the bits of bf16 -0.0 as int16: below every non-negative score's bits


@dataclass
class Bf16Table:
    """An item table (with the bias as one more column) in bf16, padded to whole segments, made once per search."""

    items: torch.Tensor  # padded rows x (d [+ 1]), bf16
    num_items: int  # rows of the real table (N + 1, with the padding id)
    max_norm: float  # the largest ‖v‖ (fp32 rows with the bias column)
    max_rounding: float  # the largest ‖v16 - v‖


@dataclass
class Found:
    scores: torch.Tensor  # B x depth fp32, best first (rows in ``fallback``: undefined)
    items: torch.Tensor  # B x depth item ids
    fallback: torch.Tensor  # B bool: rows to search again in fp32


def worth_it(table: torch.Tensor) -> bool:
    """Whether to search ``table`` this way: on a CPU whose bf16 multiplies are fast, for a large catalogue."""
    if table.device.type != "cpu" or table.size(0) < MIN_ITEMS:
        return False
    from ..precision import choose_dtype

    return choose_dtype("auto", "cpu").dtype == "bf16"


@torch.no_grad()
def prepare(table: torch.Tensor, bias: torch.Tensor | None) -> Bf16Table:
    rows = _with_bias(table.float(), None if bias is None else bias.float())
    rounded = rows.to(torch.bfloat16)
    padded = torch.zeros(math.ceil(rows.size(0) / SEGMENT) * SEGMENT, rows.size(1), dtype=torch.bfloat16)
    padded[: rows.size(0)] = rounded
    max_rounding = float((rounded.float() - rows).norm(dim=1).max())
    return Bf16Table(padded, rows.size(0), float(rows.norm(dim=1).max()), max_rounding)


def accumulation(width: int) -> float:
    """The error of two fp32 sums of ``width`` products (bf16's and the re-scoring's), relative to ‖q‖·‖v‖: n·2^-24
    each, with room to spare."""
    return 2.5 * width * 2**-24


def _with_bias(matrix: torch.Tensor, column: torch.Tensor | float | None) -> torch.Tensor:
    if column is None:
        return matrix
    if not torch.is_tensor(column):
        column = torch.full((matrix.size(0),), column, dtype=matrix.dtype)
    return torch.cat([matrix, column[:, None]], dim=1)


@torch.no_grad()
def search(queries, table, bias, prepared: Bf16Table, seen: torch.Tensor, depth: int, scratch: dict) -> Found:
    """The best ``depth`` items of ``table`` (+ ``bias``) for each query, never an item of ``seen`` (B x h ids,
    0 = padding) nor the padding id 0."""
    assert BLOCK_ITEMS % CHUNK_ITEMS == FIRST_BLOCK_ITEMS % CHUNK_ITEMS == CHUNK_ITEMS % SEGMENT == SEGMENT % FINE == 0
    queries = queries.float()
    rows = queries.size(0)
    if min(FIRST_BLOCK_ITEMS, prepared.items.size(0)) // SEGMENT < depth:  # no threshold from the first block
        return Found(torch.empty(rows, depth), torch.zeros(rows, depth, dtype=torch.long), torch.ones(rows, dtype=bool))
    query = _with_bias(queries, None if bias is None else 1.0)
    q16 = query.to(torch.bfloat16)
    norm, rounding = query.norm(dim=1), (q16.float() - query).norm(dim=1)
    error = (
        rounding * prepared.max_norm
        + norm * prepared.max_rounding
        + rounding * prepared.max_rounding
        + accumulation(query.size(1)) * (norm + rounding) * (prepared.max_norm + prepared.max_rounding)
        + 1e-30  # bf16 flushes numbers below its smallest normal one
    )
    size = rows * max(FIRST_BLOCK_ITEMS, BLOCK_ITEMS)
    buffer = scratch.get("bf16_scores")
    if buffer is None or buffer.numel() < size:
        buffer = scratch["bf16_scores"] = torch.empty(size, dtype=torch.bfloat16)
    users = q16.T.contiguous()  # d x R: scores come out items x users, which multiplies and maximises faster
    total = prepared.items.size(0)
    seen_rows, seen_items = _sorted_pairs(seen, total)
    # Where each chunk's seen items begin in seen_items (chunks start at multiples of CHUNK_ITEMS).
    bounds = torch.searchsorted(seen_items, torch.arange(0, total + CHUNK_ITEMS, CHUNK_ITEMS)).tolist()
    best = torch.empty(rows, 0, dtype=torch.int16)  # each user's largest segment maxima so far (as bits)
    fallback = torch.zeros(rows, dtype=torch.bool)
    threshold_bits = torch.zeros(rows, dtype=torch.int16)
    pool_rows, pool_items, pool_bits = [], [], []
    start = 0
    while start < total:
        # A block's scores (items x users) lie in the buffer in one piece, computed a chunk at a time and
        # maximised per segment while still in cache; the threshold and the items above it, once per block.
        end = min(start + (FIRST_BLOCK_ITEMS if start == 0 else BLOCK_ITEMS), total)
        bits = buffer[: (end - start) * rows].view(torch.int16).view(end - start, rows)
        fine = torch.empty((end - start) // FINE, rows, dtype=torch.int16)
        for offset in range(start, end, CHUNK_ITEMS):
            part = slice(offset - start, min(offset + CHUNK_ITEMS, end) - start)
            chunk = bits[part]
            torch.mm(prepared.items[offset : offset + chunk.size(0)], users, out=chunk.view(torch.bfloat16))
            if offset == 0:
                chunk[0] = MASKED  # the padding id
            lo, hi = bounds[offset // CHUNK_ITEMS], bounds[offset // CHUNK_ITEMS + 1]
            if hi > lo:  # each user's seen items can never be kept
                chunk[seen_items[lo:hi] - offset, seen_rows[lo:hi]] = MASKED
            torch.amax(chunk.view(-1, FINE, rows), dim=1, out=fine[part.start // FINE : part.stop // FINE])
        maxima = fine.view(-1, SEGMENT // FINE, rows).amax(dim=1)
        best = torch.cat([best, maxima.T], dim=1)  # a user per row: topk along rows is faster
        best = best.topk(depth, dim=1).values
        m = best[:, -1].view(torch.bfloat16).float()
        threshold = (m * (1 - ROUNDING) - 2 * error) / (1 + ROUNDING)
        fallback |= ~(threshold >= 0)  # negative or NaN: the bits no longer order like the values
        threshold_bits = torch.where(fallback, torch.iinfo(torch.int16).max, _bits_at_most(threshold))
        # The items above the threshold: in the segments whose maximum is, in their small segments whose maximum
        # is (a user's scores are a column: reading them is a cache line per item), the items that are.
        g, r = (maxima >= threshold_bits).nonzero(as_tuple=True)
        within = fine.view(-1, SEGMENT // FINE, rows)[g, :, r]
        p, f = (within >= threshold_bits[r, None]).nonzero(as_tuple=True)
        g, r = g[p] * (SEGMENT // FINE) + f, r[p]
        values = bits.view(-1, FINE, rows)[g, :, r]
        p, j = (values >= threshold_bits[r, None]).nonzero(as_tuple=True)
        pool_rows.append(r[p])
        pool_items.append(start + g[p] * FINE + j)
        pool_bits.append(values[p, j])
        start = end
    pool = [torch.cat(parts) if parts else torch.empty(0, dtype=torch.long) for parts in (pool_rows, pool_items)]
    pool.append(torch.cat(pool_bits) if pool_bits else torch.empty(0, dtype=torch.int16))
    return _exact_best(queries, table, bias, prepared, depth, fallback, threshold_bits, *pool)


def _exact_best(queries, table, bias, prepared, depth, fallback, threshold_bits, r, items, bits):
    """The fp32 best ``depth`` of each row's kept items (those still above the final threshold)."""
    rows = queries.size(0)
    keep = (bits >= threshold_bits[r]) & (items < prepared.num_items) & ~fallback[r]
    r, items = r[keep], items[keep]
    scores = (queries[r] * table[items].float()).sum(dim=1)
    if bias is not None:
        scores = scores + bias[items].float()
    counts = torch.bincount(r, minlength=rows)
    fallback = fallback | (counts < depth)
    order = torch.argsort(r, stable=True)
    r, items, scores = r[order], items[order], scores[order]
    position = torch.arange(r.numel()) - (counts.cumsum(0) - counts)[r]
    width = max(depth, int(counts.max()) if rows else 0)
    dense = torch.full((rows, width), -math.inf)
    dense_items = torch.zeros(rows, width, dtype=torch.long)
    dense[r, position] = scores
    dense_items[r, position] = items
    top = dense.topk(depth, dim=1)  # NaN first, as a rank counts it
    return Found(top.values, dense_items.gather(1, top.indices), fallback)


def _sorted_pairs(seen: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, item) of every seen item, by item, so that each chunk finds its own with a binary search."""
    r, c = ((seen > 0) & (seen < total)).nonzero(as_tuple=True)  # an id past the table cannot be scored anyway
    items = seen[r, c]
    order = torch.argsort(items)
    return r[order], items[order]


def _bits_at_most(values: torch.Tensor) -> torch.Tensor:
    """The int16 bits of the largest bf16 number at most each (non-negative) value: its fp32 bits truncated."""
    return (values.clamp(min=0).view(torch.int32) >> 16).to(torch.int16)
