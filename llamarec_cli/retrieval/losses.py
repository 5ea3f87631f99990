"""The retriever's training losses over the item catalogue, for every retriever that exposes its queries and item
table (``Retriever.train_queries`` and ``Retriever.item_table``):

- ``full``: the paper's softmax cross-entropy over all N + 1 item ids (METHOD.md §3). Its P x (N + 1) logits and
  their gradient grow with the catalogue: with a million items one Amazon-sized batch holds gigabytes.
- ``chunked``: the same loss and the same gradient, computed over slices of the catalogue so that only P x chunk
  logits exist at a time (the slices are recomputed in the backward pass). Exact, but its time is still the
  catalogue's.
- ``sampled``: softmax over the batch's own target items plus ``negatives`` uniform samples, with the log-Q
  correction (Bengio & Senecal 2008; Yi et al. 2019, "Sampling-bias-corrected neural modeling"): each candidate's
  logit loses the log of its probability of being in the sampled set, so popular items, which are in-batch
  negatives more often, are not pushed down for it. Time and memory no longer depend on the catalogue's size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOGITS_BUDGET = 1 << 24  # floats of logits one chunk may hold (64 MiB)


def item_logits(queries, table, bias, out: torch.Tensor | None = None) -> torch.Tensor:
    """Scores of every row of ``table`` for each query: queries @ table^T (+ bias), into ``out`` if given."""
    if bias is None:
        return torch.matmul(queries, table.T, out=out)
    return torch.addmm(bias, queries, table.T, out=out)


def full_softmax(queries, labels, table, bias) -> torch.Tensor:
    """Mean cross-entropy of the softmax over all rows of ``table``. On a CPU, when training, in blocks of rows
    whose logits stay in cache (_BlockedSoftmax); elsewhere, or without gradients, as one P x (N + 1) matrix."""
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (queries, table, bias))
    if needs_grad and queries.device.type == "cpu" and queries.size(0) > 0:
        return _BlockedSoftmax.apply(queries, labels, table, bias)
    return F.cross_entropy(item_logits(queries, table, bias), labels)


BLOCK_FLOATS = 1 << 20  # logits of one block of rows (4 MiB): the block stays in cache while it becomes its gradient
MIN_BLOCK_ROWS = 64  # a large catalogue's blocks are not cache-sized, but each adds a pass over the table's gradient


class _BlockedSoftmax(torch.autograd.Function):
    """The full softmax's loss, with its gradients computed in the forward pass a block of rows at a time.

    Each block's logits turn into their own gradient in place (softmax minus the targets' one-hot) and go straight
    into the three products, so the P x (N + 1) logits and their gradient never exist whole: on ml-100k (P about
    1,600, N 3,651) this took the loss's forward and backward from 33 to 24 ms on 2 cores, the difference being
    memory traffic. The backward pass only scales the stored gradients by the incoming one (no second derivatives).
    """

    @staticmethod
    def forward(ctx, queries, labels, table, bias):
        rows = min(queries.size(0), max(MIN_BLOCK_ROWS, BLOCK_FLOATS // table.size(0)))
        grad_queries, grad_table = torch.empty_like(queries), torch.zeros_like(table)
        grad_bias = None if bias is None else torch.zeros_like(bias)
        buffer = queries.new_empty(rows, table.size(0))
        total = queries.new_zeros(())
        for start in range(0, queries.size(0), rows):
            block, targets = queries[start : start + rows], labels[start : start + rows]
            logits = item_logits(block, table, bias, out=buffer[: block.size(0)])
            total -= logits.gather(1, targets[:, None]).sum()
            top = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(top).exp_()  # one exponential per logit, for the loss and its gradient
            sums = probs.sum(dim=1, keepdim=True)
            total += (top + sums.log()).sum()  # the rows' log-sum-exp
            probs.div_(sums)[torch.arange(block.size(0)), targets] -= 1  # d loss_row / d logits
            torch.mm(probs, table, out=grad_queries[start : start + rows])
            grad_table.addmm_(probs.T, block)
            if grad_bias is not None:
                grad_bias += probs.sum(dim=0)
        ctx.save_for_backward(grad_queries, grad_table, grad_bias)
        ctx.rows = queries.size(0)
        return total / queries.size(0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grad_queries, grad_table, grad_bias = ctx.saved_tensors
        scale = grad / ctx.rows
        return grad_queries * scale, None, grad_table * scale, None if grad_bias is None else grad_bias * scale


def chunk_size(rows: int, items: int) -> int:
    return max(1, min(items, LOGITS_BUDGET // max(rows, 1)))


class _ChunkedSoftmax(torch.autograd.Function):
    """Mean cross-entropy over all rows of ``table``, one slice of ``chunk`` items at a time in both passes."""

    @staticmethod
    def forward(ctx, queries, labels, table, bias, chunk):
        lse = torch.full((queries.size(0),), -math.inf, dtype=queries.dtype, device=queries.device)
        for start in range(0, table.size(0), chunk):
            part = slice(start, start + chunk)
            logits = item_logits(queries, table[part], None if bias is None else bias[part])
            lse = torch.logaddexp(lse, logits.logsumexp(dim=1))
        target = (queries * table[labels]).sum(dim=1)
        if bias is not None:
            target = target + bias[labels]
        ctx.save_for_backward(queries, labels, table, bias, lse)
        ctx.chunk = chunk
        return (lse - target).mean()

    @staticmethod
    def backward(ctx, grad):
        queries, labels, table, bias, lse = ctx.saved_tensors
        scale = grad / queries.size(0)
        grad_queries = torch.zeros_like(queries)
        grad_table = torch.zeros_like(table)
        grad_bias = None if bias is None else torch.zeros_like(bias)
        for start in range(0, table.size(0), ctx.chunk):
            part = slice(start, start + ctx.chunk)
            logits = item_logits(queries, table[part], None if bias is None else bias[part])
            probs = torch.exp(logits - lse[:, None]).mul_(scale)  # d loss / d logits, less the targets' one-hot
            grad_queries.addmm_(probs, table[part])
            grad_table[part] = probs.T @ queries
            if grad_bias is not None:
                grad_bias[part] = probs.sum(dim=0)
        grad_queries.sub_(scale * table[labels])
        grad_table.index_add_(0, labels, -scale * queries)
        if grad_bias is not None:
            grad_bias.index_add_(0, labels, (-scale).expand(labels.size(0)).to(bias.dtype))
        return grad_queries, None, grad_table, grad_bias, None


def chunked_softmax(queries, labels, table, bias, chunk: int | None = None) -> torch.Tensor:
    """The full softmax's loss and gradients without its P x (N + 1) logits."""
    chunk = chunk or chunk_size(queries.size(0), table.size(0))
    return _ChunkedSoftmax.apply(queries, labels, table, bias, chunk)


class SampledSoftmax:
    """Softmax over the batch's targets and ``negatives`` uniform items (ids 1..N), log-Q corrected.

    ``item_counts``: how often each item id occurs in the training data (N + 1 entries, id 0 the padding), the
    in-batch sampling distribution. The candidates are the set of distinct ids drawn; an id's probability of being
    in that set, for P targets and K uniform draws, is 1 - (1 - p_i)^P (1 - 1/N)^K.
    """

    def __init__(self, item_counts: torch.Tensor, negatives: int):
        counts = item_counts.double().clone()
        counts[0] = 0
        self.log_miss = torch.log1p(-counts / counts.sum().clamp(min=1))  # log(1 - p_i); p_0 = 0
        self.num_items = item_counts.numel() - 1
        self.negatives = negatives

    def log_inclusion(self, ids: torch.Tensor, targets: int) -> torch.Tensor:
        uniform = self.negatives * math.log1p(-1 / self.num_items) if self.num_items > 1 else -math.inf
        if self.log_miss.device != ids.device:
            self.log_miss = self.log_miss.to(ids.device)
        log_missed = targets * self.log_miss[ids] + uniform
        return torch.log(-torch.expm1(log_missed)).float()  # log(1 - exp(log P(missed)))

    def __call__(self, queries, labels, table, bias) -> torch.Tensor:
        drawn = torch.randint(1, self.num_items + 1, (self.negatives,), device=labels.device)
        ids, where = torch.unique(torch.cat([labels, drawn]), return_inverse=True)
        logits = item_logits(queries, table[ids], None if bias is None else bias[ids])
        logits = logits - self.log_inclusion(ids, labels.numel()).to(logits.dtype)
        return F.cross_entropy(logits, where[: labels.numel()])
