"""Config dataclasses, the ground floor every stage and the CLI share: a field with its help (``option``), checks
of any config, ``--set KEY=VALUE`` parsing, and defaults layered under dataset suggestions and the user's flags.

No torch here: the CLI builds its flags from these before any model code is imported.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


def option(default, help: str):
    """A config field with its help text (shown by ``llamarec retrieve-train --show-config``)."""
    return field(default=default, metadata={"help": help})


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
        raise ConfigError(unknown_setting(key, list(types_)))
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
        raise ConfigError(f"Setting '{key}' needs {KINDS.get(kind, kind.__name__)} (got '{text}').") from None


KINDS = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}


def unknown_setting(key: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"No setting '{key}'.{hint} Known settings: {', '.join(known)}."


def parse_sets(config_class: type, items: list[str]) -> dict:
    """``--set KEY=VALUE`` options (dashes allowed in keys) as typed values of ``config_class``'s fields."""
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'.")
        key = key.strip().replace("-", "_")
        value = parse_value(config_class, key, text.strip())
        if key in values and values[key] != value:
            raise ConfigError(f"--set {key} is given twice, as {values[key]} and as {value}; give it once.")
        values[key] = value
    return values


def with_sets(flags: dict, sets: dict) -> dict:
    """The flags and the ``--set`` values together; a setting given both ways, differently, is refused (which one
    wins would be a guess)."""
    for key in sorted(flags.keys() & sets.keys()):
        if flags[key] != sets[key]:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} {flags[key]} and --set {key}={sets[key]} disagree; give the setting once.")
    return flags | sets


def check_resume_restart(resume: bool, restart: bool) -> None:
    if resume and restart:
        raise ConfigError("--resume continues the interrupted run and --restart discards it: give one of them.")


def build_config(config_class: type, layers: list[tuple[str, dict]]) -> tuple[Any, dict[str, str]]:
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
                    raise ConfigError(unknown_setting(key, list(known)))
                continue
            values[key], sources[key] = value, layer
    try:
        return config_class(**values), sources
    except TypeError as exc:
        raise ConfigError(f"Invalid {config_class.__name__}: {exc}") from exc


RETRIEVER_LOSSES = ("full", "chunked", "sampled")  # retrieval/losses.py


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
    loss: str = option(
        "full",
        "Training loss over the catalogue: full (the paper's softmax over all items), chunked (the same, a slice "
        "of the items at a time: bounded memory) or sampled (the batch's items and --uniform-negatives uniform ones, "
        "log-Q corrected: time and memory independent of the catalogue).",
    )
    uniform_negatives: int = option(1024, "Uniform negatives per step of --loss sampled, beside the batch's items.")

    def __post_init__(self):
        check_finite(self)
        if self.loss not in RETRIEVER_LOSSES:
            raise ConfigError(f"Unknown loss '{self.loss}'. Known losses: {', '.join(RETRIEVER_LOSSES)}.")
        if self.uniform_negatives < 0:
            raise ConfigError(f"uniform_negatives must not be negative (got {self.uniform_negatives})")
        positive = ("max_len", "batch_size", "val_every", "patience", "max_epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("lr", "clip"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive (got {getattr(self, name)})")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be 0 or more (got {self.weight_decay})")
        check_seed(self.seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
