"""The Retriever contract: what a stage-1 retriever (built in or from a plugin) implements.

A retriever is a ``torch.nn.Module`` subclass of :class:`Retriever` with a typed config (a dataclass subclass of
:class:`RetrieverConfig`). Most retrievers score an item by the dot product of a query vector with the item's row
of a table (plus a bias); those implement three methods and get everything else:

- ``train_queries(windows)``: for a batch of training windows (B x L item ids, left-padded with 0), the query at
  every position that predicts an item (P x d) and the item it predicts (P);
- ``queries(histories)``: the query that predicts the next item after each history (B x L, left-padded) -> B x d;
- ``item_table()``: the item table ((N + 1) x d, row 0 the padding id) and the per-item bias (N + 1, or None).

With these, every training loss works (``--loss full|chunked|sampled``, retrieval/losses.py) and candidates are
exported a slice of the catalogue at a time. A retriever that does not score by a dot product implements
``loss(windows)`` and ``score(histories)`` (B x (N + 1) scores) instead, and trains with its own loss only.

``save`` and ``load`` (safetensors + JSON) come from the base class; llamarec trains it with the shared trainer
(``retrieve-train``: AdamW, clipping, validation, early stopping, resume). See docs/plugins.md for a complete example.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import RetrieverConfig, build_config, field_types, option, parse_sets, parse_value
from ..errors import ConfigError
from ..files import load_weights, save_tensors
from .losses import full_softmax, item_logits

__all__ = [
    "ConfigError",
    "Retriever",
    "RetrieverConfig",
    "build_config",
    "field_types",
    "option",
    "parse_sets",
    "parse_value",
]


class Retriever(nn.Module):
    """Base class of stage-1 retrievers. Subclasses set ``Config`` and implement ``train_queries``, ``queries`` and
    ``item_table`` (or else ``loss`` and ``score``): see the module's docstring."""

    Config: ClassVar[type[RetrieverConfig]] = RetrieverConfig
    dataset_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    """Per-dataset values that beat the config's defaults (but never a user's flag), e.g. a tuned dropout."""

    def __init__(self, config: RetrieverConfig, num_items: int):
        super().__init__()
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}")
        if num_items < 1:
            raise ValueError("num_items must be positive")
        self.config, self.num_items = config, num_items

    def train_queries(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries (P x d) at the positions of B x L training windows that predict an item, and those items (P)."""
        raise NotImplementedError

    def queries(self, histories: torch.Tensor) -> torch.Tensor:
        """B x d queries for the next item after each history (B x L item ids, left-padded with 0)."""
        raise NotImplementedError

    def item_table(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (N + 1) x d item table (row 0: the padding id) and the N + 1 item biases (or None)."""
        raise NotImplementedError

    @classmethod
    def missing_methods(cls) -> list[str]:
        """What a subclass must still implement: training needs ``loss`` (its own, or the default one from
        ``train_queries`` and ``item_table``), ranking needs ``score`` (its own, or from ``queries`` and
        ``item_table``)."""

        def has(*names: str) -> bool:
            return all(getattr(cls, n) is not getattr(Retriever, n) for n in names)

        missing = []
        if not has("loss") and not has("train_queries", "item_table"):
            missing.append("loss (or train_queries and item_table)")
        if not has("score") and not has("queries", "item_table"):
            missing.append("score (or queries and item_table)")
        return missing

    def checked_train_queries(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``train_queries``, its result checked: a wrong shape or type, or a padding position returned as a
        target (a window's leading zeros), would otherwise train silently or fail deep in a loss."""
        queries, targets = self.train_queries(windows)
        name = f"{type(self).__name__}.train_queries"
        if not (torch.is_tensor(queries) and torch.is_tensor(targets)) or queries.dim() != 2 or targets.dim() != 1:
            raise ConfigError(f"{name} must return queries (P x d) and their targets (P); got other shapes.")
        if queries.size(0) != targets.size(0):
            raise ConfigError(f"{name} returned {queries.size(0)} queries but {targets.size(0)} targets.")
        if targets.dtype not in (torch.int64, torch.int32):
            raise ConfigError(f"{name} must return item ids (int64) as targets, not {targets.dtype}.")
        if targets.numel():
            low, high = torch.stack(torch.aminmax(targets)).tolist()  # one device sync, not two
            if not 1 <= low <= high <= self.num_items:
                raise ConfigError(
                    f"{name} returned a target outside 1..{self.num_items}: keep only the positions that predict "
                    "an item (targets of 0 are the windows' left padding)."
                )
        return queries, targets.long()  # the losses' cross-entropy needs int64

    def checked_item_table(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``item_table``, its shapes checked: a table one row short failed deep in a loss with an index error."""
        table, bias = self.item_table()
        name, rows = f"{type(self).__name__}.item_table", self.num_items + 1
        if not torch.is_tensor(table) or table.dim() != 2 or table.size(0) != rows:
            raise ConfigError(
                f"{name} must return a table of N + 1 = {rows} rows (row 0: padding) x d; got {_shape(table)}."
            )
        if bias is not None and (not torch.is_tensor(bias) or tuple(bias.shape) != (rows,)):
            raise ConfigError(f"{name} must return a bias of N + 1 = {rows} values, or None; got {_shape(bias)}.")
        return table, bias

    def checked_training_inputs(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        """What every loss over the item table takes: queries, targets, table and bias, checked (also that the
        queries are as wide as the table)."""
        queries, targets = self.checked_train_queries(windows)
        table, bias = self.checked_item_table()
        if queries.size(1) != table.size(1):
            raise ConfigError(
                f"{type(self).__name__}.train_queries returned queries {queries.size(1)} wide; the item table is "
                f"{table.size(1)} wide."
            )
        return queries, targets, table, bias

    def checked_queries(self, histories: torch.Tensor, width: int) -> torch.Tensor:
        """``queries``, its shape checked against the histories (B) and the item table's width (d)."""
        queries = self.queries(histories)
        expected = (histories.size(0), width)
        if not torch.is_tensor(queries) or tuple(queries.shape) != expected:
            raise ConfigError(
                f"{type(self).__name__}.queries must return one query per history, as wide as the item table "
                f"({expected[0]} x {expected[1]}); got {_shape(queries)}."
            )
        return queries

    def checked_score(self, histories: torch.Tensor) -> torch.Tensor:
        """``score``, its shape checked: B x (N + 1)."""
        scores = self.score(histories)
        expected = (histories.size(0), self.num_items + 1)
        if not torch.is_tensor(scores) or tuple(scores.shape) != expected:
            raise ConfigError(
                f"{type(self).__name__}.score must return B x (N + 1) scores ({expected[0]} x {expected[1]}, column "
                f"0 the padding); got {_shape(scores)}."
            )
        return scores

    @classmethod
    def has_item_table(cls) -> bool:
        """Whether this retriever scores by queries and an item table (and so supports every loss)."""
        own = ("train_queries", "queries", "item_table")
        return all(getattr(cls, name) is not getattr(Retriever, name) for name in own)

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        """Mean training loss of B x L training windows (item ids 1..N, left-padded with 0): by default the full
        softmax over the item table."""
        return full_softmax(*self.checked_training_inputs(windows))

    def score(self, histories: torch.Tensor) -> torch.Tensor:
        """B x (N + 1) scores for the next item after each history (B x L, left-padded); column 0 is padding."""
        table, bias = self.checked_item_table()
        return item_logits(self.checked_queries(histories, table.size(1)), table, bias)

    def no_decay(self, name: str, param: nn.Parameter) -> bool:
        """Parameters AdamW must not decay: biases and LayerNorm weights (override for other norms)."""
        return param.ndim < 2 or "norm" in name.lower() or name.endswith("bias")

    def save(self, folder: Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``folder`` (created)."""
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / "model.safetensors", self.state_dict())
        meta = {"class": f"{type(self).__module__}.{type(self).__qualname__}", "num_items": self.num_items}
        (folder / "config.json").write_text(json.dumps({**meta, "config": self.config.to_dict()}, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> Retriever:
        """Rebuild from ``save``'s files. Raises ArtifactError with the file's name when they are unreadable."""
        meta = json.loads((folder / "config.json").read_text())
        config, _ = build_config(cls.Config, [("checkpoint", meta["config"])])
        weights = load_weights(folder / "model.safetensors", device="cpu")
        try:  # built without the random initialisation the weights overwrite (seconds for a million items)
            with torch.device("meta"):
                model = cls(config, meta["num_items"])
            model.load_state_dict(weights, assign=True)
            built = _without_meta_tensors(model)
        except Exception:  # noqa: BLE001 - a plugin whose constructor needs real tensors: built as before
            built = False
        if not built:
            model = cls(config, meta["num_items"])
            model.load_state_dict(weights)
        return model.to(device)


def _shape(value) -> str:
    """What a plugin method returned, for an error: a tensor's shape, else the type's name."""
    return str(tuple(value.shape)) if torch.is_tensor(value) else type(value).__name__


def _without_meta_tensors(model: nn.Module) -> bool:
    """Whether nothing of ``model`` was left on the meta device (a tensor outside its weights, made in __init__)."""
    for module in model.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        tensors += [value for value in vars(module).values() if torch.is_tensor(value)]
        if any(t.is_meta for t in tensors):
            return False
    return True
