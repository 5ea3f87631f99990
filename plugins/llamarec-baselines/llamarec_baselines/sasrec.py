"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018, arXiv 1808.09781).

A stack of causal self-attention blocks over the item sequence; the hidden state at position t, dotted with the
item embedding table, scores the item at t + 1. The layout follows the LlamaRec authors' baseline code
(Yueeeeeeee/RecSys-Extraction-Attack, ``model/sasrec.py`` and ``model/attention.py``): learned positions counted
from the first real item, the query read from a LayerNorm of the input and added back to the attention output
("pre-LN query, post-LN output" of the original TensorFlow code), a 4 x hidden ReLU feed-forward net.

Differences from that code, each deliberate: training is full-softmax cross-entropy over all items at every real
position (the reference uses one sampled negative with binary cross-entropy; METHOD.md trains every retriever the
LRURec way), torch's LayerNorm replaces the hand-written one (unbiased std, eps outside the square root), and a
padding query attends to itself so that no attention row is empty (its output is never read).

Read bottom-up: the attention mask, the attention layer, the feed-forward net, a block, the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from llamarec_cli import ConfigError, Dropout, Retriever, RetrieverConfig, option
from torch import nn


@dataclass
class SASRecConfig(RetrieverConfig):
    hidden: int = option(64, "Embedding and hidden size d.")
    blocks: int = option(2, "Number of self-attention + feed-forward blocks.")
    heads: int = option(2, "Attention heads (hidden must be a multiple of heads).")
    dropout: float = option(0.2, "Dropout on embeddings and feed-forward layers.")
    attn_dropout: float = option(0.2, "Dropout on the attention probabilities.")

    def __post_init__(self):
        super().__post_init__()
        if self.hidden < 1 or self.blocks < 1 or self.heads < 1:
            raise ConfigError("hidden, blocks and heads must be at least 1")
        if self.blocks > 64:  # built one by one: a huge count would hang rather than fail
            raise ConfigError(f"blocks must be at most 64 (got {self.blocks})")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        for name in ("dropout", "attn_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1) (got {getattr(self, name)})")


def attention_mask(real: torch.Tensor, causal: bool) -> torch.Tensor:
    """B x 1 x L x L, True where query i may read key j: real keys, j <= i when causal.

    Every query may also read itself, so that the row of a padding query is never empty (softmax over nothing is
    NaN, and 0 x NaN would then leak into real rows through the next layer's values). Real positions never read a
    padding key, so their outputs do not depend on how much padding there is.
    """
    length = real.size(1)
    allowed = real[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
    return allowed | torch.eye(length, dtype=torch.bool, device=real.device)


def positions(items: torch.Tensor) -> torch.Tensor:
    """1..n along each row's real items (counted from the first), 0 on padding: independent of the padding."""
    real = items > 0
    return real.cumsum(dim=1) * real


class CausalSelfAttention(nn.Module):
    """Multi-head attention; queries from ``query`` (the LayerNorm of x), keys and values from x, output
    LayerNorm(attention + query). There is no output projection, as in SASRec."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.heads = config.heads
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key_value = nn.Linear(config.hidden, 2 * config.hidden)
        self.dropout = Dropout(config.attn_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden)

    def forward(self, query: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        q = self.query(query).view(batch, length, self.heads, -1).transpose(1, 2)  # B x h x L x d/h
        k, v = self.key_value(x).view(batch, length, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        weights = self.dropout(weights.masked_fill(~mask, float("-inf")).softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(batch, length, hidden)
        return self.layer_norm(out + query)


class FeedForward(nn.Module):
    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.w_1 = nn.Linear(config.hidden, 4 * config.hidden)
        self.w_2 = nn.Linear(4 * config.hidden, config.hidden)
        self.dropout = Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.dropout(F.relu(self.w_1(x)))
        return self.layer_norm(self.dropout(self.w_2(inner)) + x)


class SASRecBlock(nn.Module):
    def __init__(self, config: SASRecConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden)
        self.attention = CausalSelfAttention(config)
        self.feed_forward = FeedForward(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.attention(self.layer_norm(x), x, mask))


class SASRec(Retriever):
    """Item ids (B x L, left-padded with 0) -> hidden states (B x L x d); scores over all items by the dot product
    with the item embeddings (tied). Trained with full-softmax cross-entropy at every real position."""

    Config = SASRecConfig

    def __init__(self, config: SASRecConfig, num_items: int):
        super().__init__(config, num_items)
        self.embedding = nn.Embedding(num_items + 1, config.hidden)
        self.position = nn.Embedding(config.max_len + 1, config.hidden)  # 0 is padding's position
        self.embedding_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.blocks))
        self._init_weights()

    def _init_weights(self, std: float = 0.02) -> None:
        """Truncated normal (std 0.02, bounds +-2 std) for all weights but LayerNorm's."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                if "layer_norm" not in name:
                    nn.init.trunc_normal_(param, std=std, a=-2 * std, b=2 * std)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        if items.size(1) > self.config.max_len:
            raise ValueError(f"SASRec reads at most max_len={self.config.max_len} items (got {items.size(1)})")
        mask = attention_mask(items > 0, causal=True)
        x = self.embedding_dropout(self.embedding(items) + self.position(positions(items)))
        for block in self.blocks:
            x = block(x, mask)
        return x

    def item_table(self) -> tuple[torch.Tensor, None]:
        """The item embeddings (tied) score the items, with no bias."""
        return self.embedding.weight, None

    def train_queries(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-item prediction at every position whose input is a real item."""
        inputs, labels = windows[:, :-1], windows[:, 1:]
        real = inputs > 0  # only real positions become queries
        return self(inputs)[real], labels[real]

    def queries(self, histories: torch.Tensor) -> torch.Tensor:
        return self(histories[:, -self.config.max_len :])[:, -1]
