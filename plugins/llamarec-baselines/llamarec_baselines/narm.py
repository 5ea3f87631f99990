"""NARM: neural attentive session-based recommendation (Li et al., CIKM 2017, arXiv 1711.04725).

A GRU reads the item sequence. The global encoder is its last state h_t; the local encoder attends from h_t over
all the states, alpha_tj = v . hardsigmoid(A_1 h_t + A_2 h_j), softmax over j; the context [h_t; sum_j alpha_tj
h_j] goes through dropout and a bilinear map B to the item embeddings, which it scores by dot product. The layout
follows the LlamaRec authors' baseline code (Yueeeeeeee/RecSys-Extraction-Attack, ``model/narm.py``): the hard
sigmoid and the softmax in the attention (the paper has a sigmoid and no normalisation), B as a bias-free linear
map, truncated-normal initialisation of every parameter, no per-item output bias.

Differences from that code: the reference trains on one prefix per sample (its last item's prediction); here
``loss`` predicts the next item at every real position of a window in one pass, the local attention at position
t reading the states 0..t only, which is the same objective over the same prefixes. The GRU has ``hidden`` units
by default where the reference has 2 x hidden (``gru_hidden=128`` restores it; the attention costs O(L^2 H) per
window, so this halves the training step). B is applied to the context (2H -> d) rather than to the whole item
table (d -> 2H); the product is the same and it is cheaper.

Left padding: the GRU reads left to right, so padding before the items would move its state. Each row is
therefore shifted to right padding first (its n items in columns 0..n-1): the states at 0..n-1 are then exactly
those of the unpadded sequence, the states after them are never used, and the outputs do not depend on the
padding. (The reference packs the rows with ``pack_padded_sequence``; on CPU torch's packed GRU is twice as
slow as reading the padding after the items, which changes nothing before it.)

Read bottom-up: the padding shift, the attention energies, the local attention, the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from llamarec_cli import ConfigError, Dropout, Retriever, RetrieverConfig, option
from torch import nn


@dataclass
class NARMConfig(RetrieverConfig):
    hidden: int = option(64, "Item embedding size d.")
    gru_hidden: int | None = option(None, "GRU state size H; unset: equal to hidden (the reference uses 2 x hidden).")
    dropout: float = option(0.2, "Dropout on the item embeddings (the GRU's input).")
    context_dropout: float = option(0.2, "Dropout on the concatenated global and local context.")

    def __post_init__(self):
        super().__post_init__()
        if self.hidden < 1 or (self.gru_hidden is not None and self.gru_hidden < 1):
            raise ConfigError("hidden and gru_hidden must be at least 1")
        for name in ("dropout", "context_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1) (got {getattr(self, name)})")

    @property
    def state_size(self) -> int:
        return self.gru_hidden if self.gru_hidden is not None else self.hidden


def right_padding(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For left-padded rows (B x L): the column index that moves each row's n real items to columns 0..n-1, in
    order (``items.gather(1, index)`` is right-padded), and n per row."""
    length = items.size(1)
    lengths = (items > 0).sum(dim=1)
    index = (torch.arange(length, device=items.device) + (length - lengths)[:, None]) % length
    return index, lengths


class AdditiveEnergy(torch.autograd.Function):
    """e[b, t, j] = v . hardsigmoid(a[b, t] + c[b, j]) (B x T x L from a: B x T x H, c: B x L x H, v: H).

    Written out, the B x T x L x H tensor inside is 41 M floats for a batch of 16 windows of 200 items (H = 64),
    and the time goes into allocating and re-reading it. Here it is made a few query positions at a time, in the
    forward pass and again in the backward pass, and never kept.

    ``lengths`` (optional) asks for the causal case of the training pass: queries and keys are the same right-padded
    states, rows are sorted by decreasing length, and position t only needs the keys j <= t of rows whose length
    is above t. A chunk of queries t0..t1-1 then computes the keys j < t1 of the rows still real at t0: about a
    fifth of the whole B x L x L on MovieLens batches. Entries not computed are 0; the caller masks them (j > t)
    or never reads them (padding queries).
    """

    @staticmethod
    def forward(ctx, a, c, v, lengths=None, budget: int = 1 << 21):
        batch, queries, size = a.shape
        ctx.chunk = max(1, budget // (batch * c.size(1) * size))  # query positions per chunk
        ctx.lengths = None if lengths is None else lengths.tolist()
        ctx.save_for_backward(a, c, v)
        out = a.new_zeros(batch, queries, c.size(1))
        for t0, t1, rows, keys in AdditiveEnergy.chunks(ctx, batch, queries, c.size(1)):
            x = a[:rows, t0:t1, None] + c[:rows, None, :keys]
            out[:rows, t0:t1, :keys] = F.hardsigmoid(x, inplace=True) @ v
        return out

    @staticmethod
    def backward(ctx, grad):
        a, c, v = ctx.saved_tensors
        grad_a, grad_c, grad_v = torch.zeros_like(a), torch.zeros_like(c), torch.zeros_like(v)
        for t0, t1, rows, keys in AdditiveEnergy.chunks(ctx, a.size(0), a.size(1), c.size(1)):
            x = a[:rows, t0:t1, None] + c[:rows, None, :keys]
            g = grad[:rows, t0:t1, :keys]
            grad_x = torch.ops.aten.hardsigmoid_backward(g[..., None] * v, x)
            grad_a[:rows, t0:t1] = grad_x.sum(dim=2)
            grad_c[:rows, :keys] += grad_x.sum(dim=1)
            grad_v += g.reshape(1, -1).mm(F.hardsigmoid(x, inplace=True).reshape(-1, v.size(0))).squeeze(0)
        return grad_a, grad_c, grad_v, None, None

    @staticmethod
    def chunks(ctx, batch: int, queries: int, keys: int):
        """(t0, t1, rows, keys) per chunk of query positions: rows[:rows] and keys[:keys] are computed."""
        for t0 in range(0, queries, ctx.chunk):
            t1 = min(queries, t0 + ctx.chunk)
            if ctx.lengths is None:
                yield t0, t1, batch, keys
            elif rows := sum(n > t0 for n in ctx.lengths):
                yield t0, t1, rows, t1


class LocalAttention(nn.Module):
    """NARM's local encoder: for each query state q, sum_j softmax_j(v . hardsigmoid(A_1 q + A_2 h_j)) h_j over the
    states h_j the mask allows."""

    def __init__(self, size: int):
        super().__init__()
        self.a_global = nn.Linear(size, size, bias=False)
        self.a_local = nn.Linear(size, size, bias=False)
        self.v = nn.Linear(size, 1, bias=False)

    def forward(self, queries, states, mask, lengths=None) -> torch.Tensor:
        """queries: B x T x H, states: B x L x H, mask: B x T x L (True where allowed, one at least per row).
        ``lengths``: the causal training case, see ``AdditiveEnergy``."""
        energy = AdditiveEnergy.apply(self.a_global(queries), self.a_local(states), self.v.weight[0], lengths)
        weights = energy.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return weights @ states


class NARM(Retriever):
    """Item ids (B x L, left-padded with 0) -> GRU states; the global and local contexts at a position score every
    item id by the dot product of B [global; local] with the item embeddings (tied)."""

    Config = NARMConfig

    def __init__(self, config: NARMConfig, num_items: int):
        super().__init__(config, num_items)
        size = config.state_size
        self.embedding = nn.Embedding(num_items + 1, config.hidden)
        self.embedding_dropout = Dropout(config.dropout)
        self.gru = nn.GRU(config.hidden, size, batch_first=True)
        self.attention = LocalAttention(size)
        self.context_dropout = Dropout(config.context_dropout)
        self.project = nn.Linear(2 * size, config.hidden, bias=False)  # the reference's B
        self._init_weights()

    def _init_weights(self, std: float = 0.02) -> None:
        """Truncated normal (std 0.02, bounds +-2 std) for every parameter, the GRU's included (as the reference)."""
        with torch.no_grad():
            for param in self.parameters():
                nn.init.trunc_normal_(param, std=std, a=-2 * std, b=2 * std)

    def forward(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GRU states of the right-padded rows (B x L x H; those after a row's items are not meaningful), the
        number of real items per row, and the column index that right-padded the rows (see ``right_padding``)."""
        index, lengths = right_padding(items)
        states, _ = self.gru(self.embedding_dropout(self.embedding(items.gather(1, index))))
        return states, lengths, index

    def item_table(self) -> tuple[torch.Tensor, None]:
        """The item embeddings (tied) score the items, with no bias."""
        return self.embedding.weight, None

    def context_queries(self, global_context: torch.Tensor, local_context: torch.Tensor) -> torch.Tensor:
        """B [global; local] for each pair of contexts (... x H each)."""
        return self.project(self.context_dropout(torch.cat([global_context, local_context], dim=-1)))

    def train_queries(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-item prediction at every real position, each reading its own prefix."""
        order = (windows > 0).sum(dim=1).argsort(descending=True)  # longest first, for AdditiveEnergy
        inputs, labels = windows[order, :-1], windows[order, 1:]
        states, lengths, index = self(inputs)
        length = states.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=states.device).tril()
        local = self.attention(states, states, causal[None], lengths=lengths)  # t reads the states 0..t
        real = torch.arange(length, device=states.device) < lengths[:, None]  # right-padded now
        return self.context_queries(states[real], local[real]), labels.gather(1, index)[real]

    def queries(self, histories: torch.Tensor) -> torch.Tensor:
        states, lengths, _ = self(histories[:, -self.config.max_len :])
        lengths = lengths.clamp(min=1)  # an empty history reads one padding item rather than nothing
        last = states[torch.arange(states.size(0), device=states.device), lengths - 1]  # the global context
        real = torch.arange(states.size(1), device=states.device) < lengths[:, None]
        local = self.attention(last[:, None], states, real[:, None]).squeeze(1)
        return self.context_queries(last, local)
