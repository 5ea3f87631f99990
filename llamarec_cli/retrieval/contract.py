"""The Retriever contract: what a stage-1 retriever (built in or from a plugin) implements.

A retriever is a ``torch.nn.Module`` subclass of :class:`Retriever` with a typed config (a dataclass subclass of
:class:`RetrieverConfig`). It implements two methods:

- ``loss(windows)``: the training loss of a batch of training windows (B x L item ids, left-padded with 0);
- ``score(histories)``: scores of every item id for a batch of histories (B x L, left-padded) -> B x (N + 1).

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
    """Base class of stage-1 retrievers. Subclasses set ``Config`` and implement ``loss`` and ``score``."""

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

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        """Mean training loss of B x L training windows (item ids 1..N, left-padded with 0)."""
        raise NotImplementedError

    def score(self, histories: torch.Tensor) -> torch.Tensor:
        """B x (N + 1) scores for the next item after each history (B x L, left-padded); column 0 is padding."""
        raise NotImplementedError

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
        model = cls(config, meta["num_items"])
        model.load_state_dict(load_weights(folder / "model.safetensors", device="cpu"))
        return model.to(device)
