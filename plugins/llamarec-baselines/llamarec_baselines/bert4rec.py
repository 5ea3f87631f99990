"""BERT4Rec: sequential recommendation with bidirectional encoder representations from transformers
(Sun et al., CIKM 2019, arXiv 1904.06690).

A bidirectional transformer encoder trained as a cloze task: some items of a sequence are replaced by a [MASK]
token (id num_items + 1) and predicted from both sides. To recommend, a [MASK] is appended after the history and
its prediction read. The layout follows the LlamaRec authors' baseline code (Yueeeeeeee/RecSys-Extraction-Attack,
``model/bert.py`` and ``model/attention.py``): learned positions counted from the first real item, LayerNorm and
dropout on the embeddings, post-LN blocks (x = LN(x + dropout(sublayer(x)))), a 4 x hidden GELU feed-forward net,
and an output head GELU(linear(h)) dotted with the item embeddings plus a per-item bias.

Differences from that code, each deliberate: every real item is masked with probability ``mask_prob`` and always
replaced by [MASK] (the original paper's cloze; the reference also swaps 10% for random items, keeps 10%, caps
the predictions per sequence and raises the last item's probability), and a row that drew no mask gets its last
item masked so that every window teaches something; scores (and the loss) cover the ids 0..num_items only, never
[MASK]; torch's LayerNorm replaces the hand-written one. A training window of max_len + 1 items (the trainer's
inputs plus their next item) is cut to its last max_len items, the length the model reads at scoring time
(history[-(max_len - 1):] + [MASK]).

Read bottom-up: the attention layer, the feed-forward net, a block, the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from llamarec_cli import ConfigError, Dropout, Retriever, RetrieverConfig, option
from torch import nn


@dataclass
class BERT4RecConfig(RetrieverConfig):
    hidden: int = option(64, "Embedding and hidden size d.")
    blocks: int = option(2, "Number of transformer blocks.")
    heads: int = option(2, "Attention heads (hidden must be a multiple of heads).")
    dropout: float = option(0.2, "Dropout on embeddings, attention outputs and feed-forward layers.")
    attn_dropout: float = option(0.2, "Dropout on the attention probabilities.")
    mask_prob: float = option(0.2, "Probability that a training item is replaced by [MASK] and predicted.")

    def __post_init__(self):
        super().__post_init__()
        if self.hidden < 1 or self.blocks < 1 or self.heads < 1:
            raise ConfigError("hidden, blocks and heads must be at least 1")
        if self.blocks > 64:  # built one by one: a huge count would hang rather than fail
            raise ConfigError(f"blocks must be at most 64 (got {self.blocks})")
        if self.hidden % self.heads:
            raise ConfigError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.max_len < 2:
            raise ConfigError("max_len must be at least 2 for BERT4Rec (one item and the [MASK] after it)")
        for name in ("dropout", "attn_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1) (got {getattr(self, name)})")
        if not 0 < self.mask_prob <= 1:
            raise ConfigError(f"mask_prob must be in (0, 1] (got {self.mask_prob})")


def positions(items: torch.Tensor) -> torch.Tensor:
    """1..n along each row's real items and [MASK]s (counted from the first), 0 on padding."""
    real = items > 0
    return real.cumsum(dim=1) * real


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention over the real positions, with an output projection."""

    def __init__(self, config: BERT4RecConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.output = nn.Linear(config.hidden, config.hidden)
        self.dropout = Dropout(config.attn_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """mask: B x 1 x 1 x L, True on real keys. Every row has one (the last column is always real)."""
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # B x h x L x d/h
        weights = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        weights = self.dropout(weights.masked_fill(~mask, float("-inf")).softmax(dim=-1))
        return self.output((weights @ v).transpose(1, 2).reshape(batch, length, hidden))


class FeedForward(nn.Module):
    def __init__(self, config: BERT4RecConfig):
        super().__init__()
        self.w_1 = nn.Linear(config.hidden, 4 * config.hidden)
        self.w_2 = nn.Linear(4 * config.hidden, config.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.gelu(self.w_1(x), approximate="tanh"))


class BERT4RecBlock(nn.Module):
    def __init__(self, config: BERT4RecConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_layer_norm = nn.LayerNorm(config.hidden)
        self.feed_forward = FeedForward(config)
        self.feed_forward_layer_norm = nn.LayerNorm(config.hidden)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention_layer_norm(x + self.dropout(self.attention(x, mask)))
        return self.feed_forward_layer_norm(x + self.dropout(self.feed_forward(x)))


class BERT4Rec(Retriever):
    """Item ids and [MASK]s (B x L, left-padded with 0) -> hidden states (B x L x d); the head scores every item id
    at a position. Trained on masked items; scored at a [MASK] appended after the history."""

    Config = BERT4RecConfig

    def __init__(self, config: BERT4RecConfig, num_items: int):
        super().__init__(config, num_items)
        self.mask_token = num_items + 1
        self.embedding = nn.Embedding(num_items + 2, config.hidden)  # 0 padding, 1..N items, N + 1 [MASK]
        self.position = nn.Embedding(config.max_len + 1, config.hidden)  # 0 is padding's position
        self.embedding_layer_norm = nn.LayerNorm(config.hidden)
        self.embedding_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(BERT4RecBlock(config) for _ in range(config.blocks))
        self.head = nn.Linear(config.hidden, config.hidden)
        self.item_bias = nn.Parameter(torch.zeros(num_items + 1))
        self._init_weights()

    def _init_weights(self, std: float = 0.02) -> None:
        """Truncated normal (std 0.02, bounds +-2 std) for all weights but LayerNorm's; the item bias starts at 0."""
        with torch.no_grad():
            for name, param in self.named_parameters():
                if "layer_norm" not in name and name != "item_bias":
                    nn.init.trunc_normal_(param, std=std, a=-2 * std, b=2 * std)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        if items.size(1) > self.config.max_len:
            raise ValueError(f"BERT4Rec reads at most max_len={self.config.max_len} items (got {items.size(1)})")
        mask = (items > 0)[:, None, None, :]
        x = self.embedding(items) + self.position(positions(items))
        x = self.embedding_dropout(self.embedding_layer_norm(x))
        for block in self.blocks:
            x = block(x, mask)
        return x

    def item_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ids 0..N (0 is padding; [MASK] is not a candidate) and their bias."""
        return self.embedding.weight[: self.num_items + 1], self.item_bias

    def head_queries(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.head(hidden), approximate="tanh")

    def train_queries(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked positions of each window (its last max_len items) predict the items masked there."""
        items = windows[:, -self.config.max_len :]
        real = items > 0
        masked = (torch.rand(items.shape, device=items.device) < self.config.mask_prob) & real
        masked[:, -1] |= ~masked.any(dim=1)  # a row without a mask predicts its last item (always real)
        hidden = self(items.masked_fill(masked, self.mask_token))[masked]
        return self.head_queries(hidden), items[masked]

    def queries(self, histories: torch.Tensor) -> torch.Tensor:
        mask = torch.full_like(histories[:, :1], self.mask_token)
        items = torch.cat([histories, mask], dim=1)[:, -self.config.max_len :]
        return self.head_queries(self(items)[:, -1])
