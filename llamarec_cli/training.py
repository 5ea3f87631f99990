"""The training loop both trainers share (the retriever's in retrieval/train.py, the ranker's in stages/rank_train.py):
where a run stands (``Progress``, saved with the resume state), the epochs-of-batches loop with validation, early
stopping and a step limit (``train_epochs``), what a trainer reports (``Reporter``), and the device it runs on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import ConfigError


@dataclass
class Progress:
    """Where a training run stands: the counters saved with the resume state at every validation and restored by
    ``--resume``. The retriever's trainer (``fit``) and the ranker's (``stages/rank_train.py``) share it."""

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


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # mps, meta, xpu...: untested here, refused
        raise ConfigError(f"Unknown device '{name}'. Use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for, but torch sees no CUDA GPU here. Use --device cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0.")
    return device
