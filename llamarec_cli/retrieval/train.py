"""The shared retriever trainer (METHOD.md §3): AdamW, gradient clipping, validation by Recall@10 every
``val_every`` steps with the whole history masked, early stopping, the best weights kept, and exact resume.

Resume is exact: batch order comes from (seed, epoch), and the model, optimizer and RNG states are saved at each
validation, so an interrupted run continued with ``resume=True`` ends where an uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ArtifactError, ConfigError, TrainingDivergedError
from ..layout import STATE_FILE
from .checkpoint import load_state, optimizer_state, optimizer_tensors, restore_rng, rng_tensors, save_state
from .data import eval_set, pad_left, training_windows
from .evaluate import evaluate

RETRIEVER_EARLY_STOP_METRIC = "Recall@10"  # the ranker stops on NDCG@10: ranking/train.py


@dataclass
class TrainResult:
    best_metrics: dict[str, float]
    best_step: int
    steps: int
    epochs: float
    train_seconds: float
    stopped_early: bool
    interrupted: bool = False
    validations: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, progress: Progress, batches_per_epoch: int, stopped: bool, interrupted: bool) -> TrainResult:
        return cls(
            best_metrics=progress.best_metrics,
            best_step=progress.best_step,
            steps=progress.step,
            epochs=round(progress.step / batches_per_epoch, 3),
            train_seconds=progress.train_seconds,
            stopped_early=stopped,
            interrupted=interrupted,
            validations=progress.validations,
        )

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.train_seconds if self.train_seconds else 0.0


@dataclass
class Progress:
    """Where a training run stands: the counters saved with the resume state at every validation and restored by
    ``--resume``. The retriever's trainer (``fit``) and the ranker's (``ranking/train.py``) share it, and the loop."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # the batch of ``epoch`` to continue from
    bad: int = 0  # validations since the last gain
    best: float = -1.0
    best_step: int = 0
    best_metrics: dict = field(default_factory=dict)
    validations: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0

    @classmethod
    def restored(cls, saved: dict) -> Progress:
        """The progress that ``counters`` recorded."""
        return cls(**{name: saved[name] for name in cls.__dataclass_fields__})

    def counters(self, batch: int, **more) -> dict:
        """What the resume state records at a validation after ``batch`` batches of the epoch (``more``: the
        trainer's own, recorded before ``train_seconds``)."""
        counters = {"step": self.step, "epoch": self.epoch, "batch": batch, "bad": self.bad, "best": self.best}
        counters |= {"best_step": self.best_step, "best_metrics": self.best_metrics, "validations": self.validations}
        return counters | more | {"train_seconds": self.train_seconds}

    def validated(self, metrics: dict, metric: str, batch: int, batches: int) -> bool:
        """Count a validation after ``batch`` of the epoch's ``batches`` batches; whether ``metric`` beat the best."""
        improved = metrics.get(metric, 0.0) > self.best
        if improved:
            self.best, self.best_step, self.best_metrics, self.bad = metrics[metric], self.step, metrics, 0
        else:
            self.bad += 1
        epoch = round(self.epoch + batch / batches, 3)
        self.validations.append({"step": self.step, "epoch": epoch, **metrics})
        return improved


def train_epochs(
    progress: Progress,
    *,
    epochs: int,
    batches: int,
    order: Callable[[int], list[int]],
    train_step: Callable[[list[int], int], float],
    validate: Callable[[int], bool],
    every: int,
    reporter: Reporter,
    stop_after_steps: int | None = None,
) -> tuple[bool, bool]:
    """The loop both trainers share: from ``progress`` on, ``epochs`` epochs of ``batches`` batches each, in the
    ``order(epoch)`` of the training rows; ``train_step(order, batch)`` trains on one batch and returns its loss;
    ``validate(batches done)`` runs every ``every`` steps and says whether to stop early. ``stop_after_steps``: stop
    (as if interrupted) after this many steps in total. Returns (stopped early, interrupted)."""
    stopped = interrupted = False
    while progress.epoch < epochs and not stopped:
        rows = order(progress.epoch)
        reporter.epoch(progress.epoch, batches, progress.batch)
        for batch_index in range(progress.batch, batches):
            if stop_after_steps is not None and progress.step >= stop_after_steps:
                interrupted = True
                break
            began = time.perf_counter()
            value = train_step(rows, batch_index)
            progress.step += 1
            progress.train_seconds += time.perf_counter() - began
            reporter.step(value)
            if progress.step % every == 0 and validate(batch_index + 1):
                stopped = True
                break
        if interrupted:
            break
        progress.batch = 0
        if not stopped:
            progress.epoch += 1
    return stopped, interrupted


class Reporter:
    """What the trainer tells the outside world; the default says nothing."""

    def epoch(self, epoch: int, batches: int, done: int) -> None: ...

    def step(self, loss: float) -> None: ...

    def validated(self, step: int, metrics: dict[str, float], best: float, bad: int, patience: int) -> None: ...

    def note(self, message: str) -> None:
        """One line worth telling before the training starts (e.g. the dtype chosen, and why)."""

    def close(self) -> None: ...


def param_groups(model) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if model.no_decay(name, param) else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Unknown device '{name}'. Use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for, but torch sees no CUDA GPU here. Use --device cpu.")
    return device


def fit(
    model,
    dataset,
    *,
    device: str | torch.device = "cpu",
    state_dir: Path | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``dataset``'s training sequences and leave the best weights loaded.

    ``state_dir``: where the resumable state goes (saved at every validation); ``resume``: continue from it.
    ``stop_after_steps``: stop (as if interrupted) after this many steps in total; used by tests.
    """
    config, reporter = model.config, reporter or Reporter()
    device = torch.device(device)
    model.to(device).train()
    windows = training_windows(list(dataset.sequences("train").values()), config.max_len)
    if not windows:
        raise ArtifactError(f"Dataset '{dataset.name}' has no training sequence of two or more items.")
    val = eval_set(dataset, "val")
    optimizer = torch.optim.AdamW(param_groups(model), lr=config.lr, weight_decay=config.weight_decay)
    batches_per_epoch = -(-len(windows) // config.batch_size)

    progress = Progress()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resume and state_dir is not None and (state_dir / STATE_FILE).is_file():
        progress, best_state = _restore_state(state_dir, model, optimizer, device)

    def train_step(order: list[int], batch_index: int) -> float:
        rows = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
        batch = pad_left([windows[i] for i in rows]).to(device)
        loss = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        value = loss.item()
        if not math.isfinite(value):  # stop before the broken weights reach a validation or a checkpoint
            raise TrainingDivergedError(
                f"The training loss became {value} at step {progress.step + 1}: the run diverged (lr {config.lr})."
            )
        optimizer.step()
        return value

    def validate(batch_done: int) -> bool:
        nonlocal best_state
        metrics = evaluate(model, val, device)
        if progress.validated(metrics, RETRIEVER_EARLY_STOP_METRIC, batch_done, batches_per_epoch):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        reporter.validated(progress.step, metrics, progress.best, progress.bad, config.patience)
        if state_dir is not None:
            _save_state(state_dir, model, best_state, optimizer, progress.counters(batch_done))
        return progress.bad >= config.patience

    try:
        stopped, interrupted = train_epochs(
            progress,
            epochs=config.max_epochs,
            batches=batches_per_epoch,
            order=lambda epoch: torch.randperm(
                len(windows), generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            ).tolist(),
            train_step=train_step,
            validate=validate,
            every=config.val_every,
            reporter=reporter,
            stop_after_steps=stop_after_steps,
        )
        if (
            not stopped
            and not interrupted
            and (not progress.validations or progress.validations[-1]["step"] != progress.step)
        ):
            validate(0)  # the last steps since the previous validation count too
    finally:
        reporter.close()
    model.load_state_dict(best_state)
    return TrainResult.of(progress, batches_per_epoch, stopped, interrupted)


def _restore_state(state_dir: Path, model, optimizer, device) -> tuple[Progress, dict[str, torch.Tensor]]:
    """``resume=True``: the model, optimizer and RNG as the last validation left them; the progress and best weights."""
    tensors, saved = load_state(state_dir / STATE_FILE)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best_state = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
    optimizer.load_state_dict(optimizer_state(optimizer, tensors, device))
    restore_rng(tensors, device)
    return Progress.restored(saved), best_state


def _save_state(state_dir: Path, model, best_state, optimizer, counters: dict) -> None:
    """One file: the tensors and, in its metadata, the counters, so they can never disagree."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in best_state.items()}
    tensors |= optimizer_tensors(optimizer) | rng_tensors(next(model.parameters()).device)
    save_state(state_dir / STATE_FILE, tensors, counters)
