"""The shared retriever trainer (METHOD.md §3): AdamW, gradient clipping, validation by Recall@10 every
``val_every`` steps with the whole history masked, early stopping, the best weights kept, and exact resume.

Resume is exact: batch order comes from (seed, epoch), and the model, optimizer and RNG states are saved at each
validation, so an interrupted run continued with ``resume=True`` ends where an uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ArtifactError, ConfigError, TrainingDivergedError
from .checkpoint import load_state, optimizer_state, optimizer_tensors, restore_rng, rng_tensors, save_state
from .data import eval_set, pad_left, training_windows
from .evaluate import evaluate

EARLY_STOP_METRIC = "Recall@10"
STATE_FILE = "state.safetensors"


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

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.train_seconds if self.train_seconds else 0.0


class Reporter:
    """What the trainer tells the outside world; the default says nothing."""

    def epoch(self, epoch: int, batches: int, done: int) -> None: ...

    def step(self, loss: float) -> None: ...

    def validated(self, step: int, metrics: dict[str, float], best: float, bad: int, patience: int) -> None: ...

    def note(self, message: str) -> None:
        """One line worth telling before the training starts (e.g. the dtype chosen, and why)."""

    def close(self) -> None: ...


class RichReporter(Reporter):
    """A progress bar per epoch with the running loss and the last validation figures, on stderr."""

    def __init__(self, max_epochs: int, metric: str = EARLY_STOP_METRIC):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from ..cli.output import stderr

        self.max_epochs, self.metric, self.loss, self.last = max_epochs, metric, None, "no validation yet"
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=stderr,
            transient=False,
        )
        self.progress.start()
        self.task = None

    def _status(self) -> str:
        loss = "" if self.loss is None else f"loss {self.loss:.4f} · "
        return loss + self.last

    def epoch(self, epoch, batches, done):
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(
            f"epoch {epoch + 1}/{self.max_epochs}", total=batches, completed=done, status=self._status()
        )

    def step(self, loss):
        self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        self.progress.update(self.task, advance=1, status=self._status())

    def validated(self, step, metrics, best, bad, patience):
        self.last = (
            f"val R@10 {metrics['Recall@10']:.4f} N@10 {metrics['NDCG@10']:.4f} "
            f"(best {self.metric} {best:.4f}, {bad}/{patience} without gain)"
        )
        self.progress.update(self.task, status=self._status())

    def note(self, message):
        self.progress.console.print(message, highlight=False, soft_wrap=True)

    def close(self):
        self.progress.stop()


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

    step, epoch, start_batch, bad, train_seconds = 0, 0, 0, 0, 0.0
    best, best_step, best_metrics, validations = -1.0, 0, {}, []
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resume and state_dir is not None and (state_dir / STATE_FILE).is_file():
        tensors, saved = load_state(state_dir / STATE_FILE)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best_state = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
        optimizer.load_state_dict(optimizer_state(optimizer, tensors, device))
        restore_rng(tensors, device)
        step, epoch, start_batch, bad = saved["step"], saved["epoch"], saved["batch"], saved["bad"]
        best, best_step, best_metrics = saved["best"], saved["best_step"], saved["best_metrics"]
        validations, train_seconds = saved["validations"], saved["train_seconds"]

    def validate(batch_done: int) -> bool:
        nonlocal best, best_step, best_metrics, bad, best_state
        metrics = evaluate(model, val, device)
        improved = metrics.get(EARLY_STOP_METRIC, 0.0) > best
        if improved:
            best, best_step, best_metrics, bad = metrics[EARLY_STOP_METRIC], step, metrics, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        validations.append({"step": step, "epoch": round(epoch + batch_done / batches_per_epoch, 3), **metrics})
        reporter.validated(step, metrics, best, bad, config.patience)
        if state_dir is not None:
            counters = {"step": step, "epoch": epoch, "batch": batch_done, "bad": bad, "best": best}
            counters |= {"best_step": best_step, "best_metrics": best_metrics, "validations": validations}
            _save_state(state_dir, model, best_state, optimizer, counters | {"train_seconds": train_seconds})
        return bad >= config.patience

    stopped = interrupted = False
    try:
        while epoch < config.max_epochs and not stopped:
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            order = torch.randperm(len(windows), generator=generator).tolist()
            reporter.epoch(epoch, batches_per_epoch, start_batch)
            for batch_index in range(start_batch, batches_per_epoch):
                if stop_after_steps is not None and step >= stop_after_steps:
                    interrupted = True
                    break
                began = time.perf_counter()
                rows = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
                batch = pad_left([windows[i] for i in rows]).to(device)
                loss = model.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
                value = loss.item()
                if not math.isfinite(value):  # stop before the broken weights reach a validation or a checkpoint
                    raise TrainingDivergedError(
                        f"The training loss became {value} at step {step + 1}: the run diverged (lr {config.lr})."
                    )
                optimizer.step()
                step += 1
                reporter.step(value)
                train_seconds += time.perf_counter() - began
                if step % config.val_every == 0 and validate(batch_index + 1):
                    stopped = True
                    break
            if interrupted:
                break
            start_batch = 0
            if not stopped:
                epoch += 1
        if not stopped and not interrupted and (not validations or validations[-1]["step"] != step):
            validate(0)  # the last steps since the previous validation count too
    finally:
        reporter.close()
    model.load_state_dict(best_state)
    return TrainResult(
        best_metrics=best_metrics,
        best_step=best_step,
        steps=step,
        epochs=round(step / batches_per_epoch, 3),
        train_seconds=train_seconds,
        stopped_early=stopped,
        interrupted=interrupted,
        validations=validations,
    )


def _save_state(state_dir: Path, model, best_state, optimizer, counters: dict) -> None:
    """One file: the tensors and, in its metadata, the counters, so they can never disagree."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in best_state.items()}
    tensors |= optimizer_tensors(optimizer) | rng_tensors(next(model.parameters()).device)
    save_state(state_dir / STATE_FILE, tensors, counters)
