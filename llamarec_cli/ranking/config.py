"""The ranker's training settings (METHOD.md §5), typed, with help, each one a flag of ``llamarec rank-train``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import check_finite, check_seed, option
from ..errors import ConfigError
from ..precision import DTYPES
from .models import DEFAULT_MODEL, QUANTIZATIONS
from .templates import DEFAULT_TEMPLATE

NEGATIVES = ("random", "retrieved", "validation")  # the training candidates: see RankerConfig.negatives
LOSSES = ("lm", "letters")  # see RankerConfig.loss


def check_negatives(negatives: str) -> None:
    if negatives not in NEGATIVES:
        raise ConfigError(f"Unknown --negatives '{negatives}'. Use one of: {', '.join(NEGATIVES)}.")


@dataclass
class RankerConfig:
    model: str = option(DEFAULT_MODEL, "Base LLM: a hub id, a local directory, or an alias (smollm2-135m).")
    template: str = option(DEFAULT_TEMPLATE, "Prompt template: a name (llamarec templates list) or a .toml path.")
    retriever: str = option("lrurec", "Whose candidates to rank (llamarec candidates --retriever).")
    quantization: str = option("auto", "4bit (QLoRA, NF4), 8bit or none; auto: 4bit on CUDA, none on CPU.")
    dtype: str = option(
        "auto",
        "Compute dtype of the frozen base: bf16, fp16 or fp32 (LoRA weights and optimizer state stay fp32); auto: "
        "bf16 where the GPU supports it or the CPU multiplies it fast (measured once), else fp32.",
    )
    lora_r: int = option(8, "LoRA rank.")
    lora_alpha: int = option(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = option(0.05, "Dropout on the LoRA input.")
    lora_target: str = option("", "Comma-separated module names to adapt; empty: q_proj,v_proj of Llama-like models.")
    lr: float = option(1e-4, "Peak learning rate (AdamW; paged 32-bit AdamW on CUDA).")
    warmup_steps: int = option(100, "Linear warm-up steps, then linear decay to 0 at the end of training.")
    epochs: int = option(1, "Passes over the training examples.")
    batch_size: int = option(16, "Examples per step (per process); the paper: 16 on ML-100k, 12 on Amazon.")
    negatives: str = option(
        "random",
        "random: 19 random items + the true one (the paper); retrieved: the retriever's own top-k for training "
        "prefixes that contain the true item; validation: the validation requests the retriever found (never "
        "trained on, like test requests), less the --max-val-examples users held out to pick the best step and α.",
    )
    shuffle_candidates: bool = option(
        False,
        "Show retrieved training candidates in a seeded random order instead of the retriever's: on training "
        "prefixes the retriever, which trained on them, puts the true item first about twice as often as at test "
        "time (games: 24% against 12%), and a ranker taught in its order learns to answer A.",
    )
    loss: str = option(
        "lm",
        "lm: cross-entropy of the answer letter and EOS over the whole vocabulary (the paper); letters: "
        "cross-entropy of the true candidate over the candidates' letter logits only, as ranking reads them.",
    )
    retriever_prior: float = option(
        0.0,
        "With --negatives retrieved or validation and loss letters: add this multiple of the retriever's "
        "log-probabilities to the letter logits in the loss, so the ranker learns what the retriever misses instead "
        "of its order; it is then validated fused at alpha = 1 / (1 + prior), an alpha the fusion grid "
        "includes. 0: off.",
    )
    max_train_examples: int | None = option(None, "Train on a seeded random sample of this many examples.")
    eval_every: int = option(100, "Validate (NDCG@10 on the valid retrieval subset) every this many steps.")
    patience: int = option(20, "Stop after this many validations without a better NDCG@10.")
    max_val_examples: int | None = option(None, "Validate on a seeded sample of this many validation users.")
    fusion_val_examples: int | None = option(
        None,
        "Choose the fusion alpha on a seeded sample of this many validation users, never ones trained on; unset: "
        "all of them (with --negatives validation: the held-out ones). Drawn like the early-stopping sample, so "
        "the smaller of the two lies in the larger; users without early-stopping scores are scored once with the "
        "best adapter. --resume may change it.",
    )
    eval_batch_size: int = option(8, "Requests per forward pass when scoring.")
    tokens_per_pass: int | None = option(
        None,
        "Most tokens per forward pass in training and validation: a step's batch is split into passes whose "
        "gradients add up to the batch's; unset: 1,024 on CPU (less memory, no slower in training; validation "
        "at 4,096 would be about a fifth faster but adds 0.85 GiB beside the training state), the whole batch on "
        "GPU.",
    )
    clip: float = option(1.0, "Gradient-norm clipping (the reference's transformers Trainer default).")
    gradient_checkpointing: bool | None = option(
        None, "Recompute activations in the backward pass: far less memory, about a quarter slower; auto: on."
    )
    seed: int = option(42, "Seed for example sampling, negatives, batch order and LoRA init.")

    def __post_init__(self):
        check_finite(self)
        for name in ("lora_r", "lora_alpha", "epochs", "batch_size", "eval_every", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("max_train_examples", "max_val_examples", "fusion_val_examples", "tokens_per_pass"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("lr", "clip"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive (got {getattr(self, name)})")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1) (got {self.lora_dropout})")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be 0 or more (got {self.warmup_steps})")
        check_seed(self.seed)
        if self.lora_target.strip() and not self.lora_targets:
            raise ConfigError(
                f"lora_target '{self.lora_target}' names no module: e.g. q_proj,v_proj (or leave it out)."
            )
        if self.negatives not in NEGATIVES:
            raise ConfigError(f"Unknown negatives '{self.negatives}'. Use one of: {', '.join(NEGATIVES)}.")
        if self.loss not in LOSSES:
            raise ConfigError(f"Unknown loss '{self.loss}'. Use one of: {', '.join(LOSSES)}.")
        if self.retriever_prior < 0:
            raise ConfigError(f"retriever_prior must be 0 or more (got {self.retriever_prior})")
        if self.retriever_prior and (self.loss != "letters" or self.negatives == "random"):
            raise ConfigError(
                "retriever_prior needs the retriever's scores of the training candidates and a loss over the "
                "letters: add --negatives retrieved (or validation) --set loss=letters, or drop retriever_prior."
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"Unknown dtype '{self.dtype}'. Use one of: {', '.join(DTYPES)}.")
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"Unknown quantization '{self.quantization}'. Use one of: {', '.join(QUANTIZATIONS)}.")

    @property
    def validation_alpha(self) -> float | None:
        """The fusion α whose order the loss trains (and validation scores) when a retriever prior is set: the
        order of letters + prior · retriever log-probabilities, which α = 1 / (1 + prior) gives."""
        return 1 / (1 + self.retriever_prior) if self.retriever_prior else None

    @property
    def lora_targets(self) -> list[str] | None:
        return [name.strip() for name in self.lora_target.split(",") if name.strip()] or None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_ranker_config(dataset: str, flags: dict) -> tuple[RankerConfig, dict[str, str]]:
    """Config defaults < the dataset's suggestions (batch size) < the user's flags; and where each value came from."""
    from .. import plugins
    from ..config import build_config

    registry = plugins.datasets()
    dataset_defaults = dict(registry.get(dataset).ranking_defaults) if dataset in registry else {}
    return build_config(RankerConfig, [("dataset", dataset_defaults), ("flag", flags)])
