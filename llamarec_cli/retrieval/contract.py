"""The Retriever contract: what a stage-1 retriever (built in or from a plugin) implements.

A retriever is a ``torch.nn.Module`` subclass of :class:`Retriever` with a typed config (a dataclass subclass of
:class:`RetrieverConfig`). It implements two methods:

- ``loss(windows)``: the training loss of a batch of training windows (B x L item ids, left-padded with 0);
- ``score(histories)``: scores of every item id for a batch of histories (B x L, left-padded) -> B x (N + 1).

``fit`` (the shared trainer: AdamW, clipping, validation, early stopping, resume), ``save`` and ``load``
(safetensors + JSON) come from the base class. See docs/plugins.md for a complete example.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError


def option(default, help: str):
    """A config field with its help text (shown by ``llamarec retrieve-train --show-config``)."""
    return field(default=default, metadata={"help": help})


@dataclass
class RetrieverConfig:
    """Training hyper-parameters every retriever shares; a retriever's own config subclasses this."""

    max_len: int = option(50, "Longest history the model reads; longer training sequences are cut into windows.")
    batch_size: int = option(64, "Training windows per step.")
    lr: float = option(1e-3, "AdamW learning rate (no schedule).")
    weight_decay: float = option(0.01, "AdamW weight decay, not applied to biases and LayerNorm weights.")
    clip: float = option(5.0, "Gradient-norm clipping threshold.")
    val_every: int = option(500, "Validate every this many steps.")
    patience: int = option(20, "Stop after this many validations without a better Recall@10.")
    max_epochs: int = option(500, "Upper bound on passes over the training windows.")
    seed: int = option(42, "Seed for initialisation, batch order and dropout.")

    def __post_init__(self):
        check_finite(self)
        positive = ("max_len", "batch_size", "val_every", "patience", "max_epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.lr <= 0 or self.weight_decay < 0 or self.clip <= 0:
            raise ConfigError("lr and clip must be positive and weight_decay not negative")
        check_seed(self.seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_finite(config) -> None:
    """Refuse NaN and infinity in any float setting: every range check passes NaN (all comparisons are false)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number (got {value}).")


def check_seed(seed: int) -> None:
    if not 0 <= seed < 2**32:  # torch generators take 64 bits, and seeds are multiplied and offset on the way
        raise ConfigError(f"seed must be from 0 to {2**32 - 1} (got {seed}).")


def field_types(config_class: type) -> dict[str, type]:
    hints = typing.get_type_hints(config_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_class)}


def parse_value(config_class: type, key: str, text: str):
    """Turn ``--set key=value`` text into the field's type, with a clear error naming the known keys."""
    types_ = field_types(config_class)
    if key not in types_:
        raise ConfigError(f"{config_class.__name__} has no setting '{key}'. Known settings: {', '.join(types_)}.")
    kind = types_[key]
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:  # e.g. int | None
        options = [t for t in typing.get_args(kind) if t is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        kind = options[0]
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)
    except ValueError:
        raise ConfigError(f"Setting '{key}' needs a {kind.__name__} value (got '{text}').") from None


def parse_sets(config_class: type, items: list[str]) -> dict:
    """``--set KEY=VALUE`` options (dashes allowed in keys) as typed values of ``config_class``'s fields."""
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'.")
        key = key.strip().replace("-", "_")
        values[key] = parse_value(config_class, key, text.strip())
    return values


def build_config(config_class: type, layers: list[tuple[str, dict]]) -> tuple[RetrieverConfig, dict[str, str]]:
    """Apply layers of values in order (later wins) over the dataclass defaults.

    Returns the config and, for each field, the name of the layer its value came from ("default" otherwise).
    Keys a layer has that the config lacks are ignored for dataset-wide defaults (a dataset suggests a batch
    size; a retriever without that field ignores it) but refused when the user typed them.
    """
    known = field_types(config_class)
    values, sources = {}, {name: "default" for name in known}
    for layer, layer_values in layers:
        for key, value in layer_values.items():
            if key not in known:
                if layer == "flag":
                    raise ConfigError(
                        f"{config_class.__name__} has no setting '{key}'. Known settings: {', '.join(known)}."
                    )
                continue
            values[key], sources[key] = value, layer
    try:
        return config_class(**values), sources
    except TypeError as exc:
        raise ConfigError(f"Invalid {config_class.__name__}: {exc}") from exc


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

    def fit(self, dataset, **options):
        """Train on a preprocessed dataset with the shared trainer; see ``llamarec_cli.retrieval.train.fit``."""
        from .train import fit

        return fit(self, dataset, **options)

    def save(self, folder: Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``folder`` (created)."""
        from .checkpoint import save_tensors

        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / "model.safetensors", self.state_dict())
        meta = {"class": f"{type(self).__module__}.{type(self).__qualname__}", "num_items": self.num_items}
        (folder / "config.json").write_text(json.dumps({**meta, "config": self.config.to_dict()}, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> Retriever:
        """Rebuild from ``save``'s files. Raises ArtifactError with the file's name when they are unreadable."""
        from .checkpoint import load_weights

        meta = json.loads((folder / "config.json").read_text())
        config, _ = build_config(cls.Config, [("checkpoint", meta["config"])])
        model = cls(config, meta["num_items"])
        model.load_state_dict(load_weights(folder / "model.safetensors", device="cpu"))
        return model.to(device)
