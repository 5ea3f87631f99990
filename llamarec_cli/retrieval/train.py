"""The shared retriever trainer (METHOD.md §3): AdamW, gradient clipping, validation by Recall@10 every
``val_every`` steps with the whole history masked, early stopping, the best weights kept, and exact resume.

Resume is exact: batch order comes from (seed, epoch), and the model, optimizer and RNG states are saved at each
validation, so an interrupted run continued with ``resume=True`` ends where an uninterrupted run would have.

Under ``accelerate launch`` (an ``accelerator`` with several processes), each process trains on its share of every
batch's windows (DDP averages the processes' mean losses' gradients, as DDP does), ranks its share of the
validation users, and keeps its own RNG state in the resume file; the main process alone writes. A run resumes
with the number of processes it started with.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..artifacts import load_state, optimizer_state, optimizer_tensors, restore_rng, rng_tensors, save_state
from ..errors import ArtifactError, ConfigError, TrainingDivergedError
from ..layout import STATE_FILE
from ..training import Progress, Reporter, train_epochs
from .data import eval_set, pad_left, training_windows
from .evaluate import evaluate
from .losses import SampledSoftmax, chunked_softmax

RETRIEVER_EARLY_STOP_METRIC = "Recall@10"  # the ranker stops on NDCG@10: stages/rank_train.py


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


def make_optimizer(model, config, device: torch.device) -> torch.optim.AdamW:
    """AdamW, no decay on biases and norms. Fused where torch has the kernel: at a million items the update of the
    item table took 0.6 s of a 0.75 s step as separate passes, 0.05 s fused (benchmarks/retrieval.py --scale)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups(model), lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def param_groups(model) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if model.no_decay(name, param) else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def loss_and_gradients(objective, model, optimizer, batch: torch.Tensor) -> torch.Tensor:
    """One batch's loss, with its gradients (replacing the last ones) clipped to the config's norm: a training step
    but for the optimizer's update, which fit makes only once the loss is known to be finite."""
    loss = objective(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), model.config.clip)
    return loss


class Objective(torch.nn.Module):
    """The training loss as a module's forward, so that DDP (which hooks ``forward``) can wrap it."""

    def __init__(self, model, windows: list[list[int]]):
        super().__init__()
        self.model = model
        config = model.config
        if config.loss != "full" and not model.has_item_table():
            raise ConfigError(
                f"{type(model).__name__} trains with its own loss only: --loss {config.loss} needs a retriever that "
                "implements train_queries, queries and item_table (docs/plugins.md)."
            )
        self.sampled = None
        if config.loss == "sampled":  # in-batch negatives are drawn as labels are: by the items' label counts
            labels = np.fromiter(itertools.chain.from_iterable(w[1:] for w in windows), dtype=np.int64)
            counts = torch.from_numpy(np.bincount(labels, minlength=model.num_items + 1))
            self.sampled = SampledSoftmax(counts, config.uniform_negatives)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        model, loss = self.model, self.model.config.loss
        if loss == "full":
            return model.loss(windows)
        queries, labels, table, bias = model.checked_training_inputs(windows)
        if loss == "chunked":
            return chunked_softmax(queries, labels, table, bias)
        return self.sampled(queries, labels, table, bias)


def fit(
    model,
    dataset,
    *,
    device: str | torch.device = "cpu",
    state_dir: Path | None = None,
    resume: bool = False,
    reporter: Reporter | None = None,
    stop_after_steps: int | None = None,
    accelerator=None,
) -> TrainResult:
    """Train ``model`` in place on ``dataset``'s training sequences and leave the best weights loaded.

    ``state_dir``: where the resumable state goes (saved at every validation); ``resume``: continue from it.
    ``stop_after_steps``: stop (as if interrupted) after this many steps in total; used by tests.
    ``accelerator``: an ``accelerate.Accelerator`` of several processes (``accelerate launch``), or None.
    """
    config, reporter = model.config, reporter or Reporter()
    device = torch.device(device)
    model.to(device).train()
    windows = training_windows(list(dataset.sequences("train").values()), config.max_len)
    if not windows:
        raise ArtifactError(f"Dataset '{dataset.name}' has no training sequence of two or more items.")
    val = eval_set(dataset, "val")
    objective = Objective(model, windows)
    optimizer = make_optimizer(model, config, device)
    rank, processes = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    # The epoch's last, partial batch, unless it has fewer windows than there are processes to share it.
    batches_per_epoch = len(windows) // config.batch_size + (len(windows) % config.batch_size >= processes)
    if config.batch_size > len(windows):  # a typo of a few zeros would otherwise train one step an epoch unsaid
        reporter.note(
            f"batch_size {config.batch_size:,} is more than the {len(windows):,} training windows: each epoch "
            "is one step over all of them."
        )
    if processes > 1:
        objective = accelerator.prepare(objective)  # DDP: the same initial weights everywhere, gradients averaged
        torch.manual_seed(config.seed * 1_000_003 + rank)  # each process its own dropout and negatives

    progress = Progress()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if resume and state_dir is not None and (state_dir / STATE_FILE).is_file():
        progress, best_state = _restore_state(state_dir, model, optimizer, device, rank, processes)
        metric = RETRIEVER_EARLY_STOP_METRIC
        reporter.note(
            f"Resuming at step {progress.step:,}, the last validation; best validation {metric} so far "
            f"{progress.best:.4f}, at step {progress.best_step:,}."
        )

    def train_step(order: list[int], batch_index: int) -> float:
        rows = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
        batch = pad_left([windows[i] for i in rows[rank::processes]]).to(device)
        loss = loss_and_gradients(objective, model, optimizer, batch)
        value = (accelerator.reduce(loss.detach(), reduction="mean") if processes > 1 else loss).item()
        if not math.isfinite(value):  # stop before the broken weights reach a validation or a checkpoint
            raise TrainingDivergedError(
                f"The training loss became {value} at step {progress.step + 1}: the run diverged (lr {config.lr}).",
                untrained=progress.step == 0,  # the first loss comes before any update
            )
        optimizer.step()
        return value

    def validate(batch_done: int) -> bool:
        nonlocal best_state
        metrics = evaluate(model, val, device, accelerator)  # the same figures in every process
        if progress.validated(metrics, RETRIEVER_EARLY_STOP_METRIC, batch_done, batches_per_epoch):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        reporter.validated(progress.step, metrics, progress.best, progress.bad, config.patience)
        if state_dir is not None:
            rng = _gathered_rng(accelerator, device) if processes > 1 else rng_tensors(device)
            if rank == 0:
                counters = progress.counters(batch_done, processes=processes)
                _save_state(state_dir, model, best_state, optimizer, rng, counters)
            if processes > 1:
                accelerator.wait_for_everyone()
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


def _restore_state(state_dir: Path, model, optimizer, device, rank: int, processes: int):
    """``resume=True``: the model, optimizer and RNG as the last validation left them; the progress and best weights.
    Process ``rank`` of a multi-process run takes its own RNG state (saved as ``rank.<rank>.rng.*``); a run resumes
    with the number of processes it had, since batches are shared out by it."""
    tensors, saved = load_state(state_dir / STATE_FILE)
    if saved.get("processes", 1) != processes:
        raise ArtifactError(
            f"The interrupted run in {state_dir.parent} ran on {saved.get('processes', 1)} process(es), this one on "
            f"{processes}: resume it with as many (accelerate launch --num_processes N), or start afresh (--restart)."
        )
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best_state = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
    optimizer.load_state_dict(optimizer_state(optimizer, tensors, device))
    own = f"rank.{rank}."
    if any(k.startswith(own) for k in tensors):
        tensors = {k.removeprefix(own): v for k, v in tensors.items()}
    restore_rng(tensors, device)
    return Progress.restored(saved), best_state


def _gathered_rng(accelerator, device) -> dict[str, torch.Tensor]:
    """Every process's RNG state, as ``rank.<i>.rng.*`` tensors (for the main process to save)."""
    from accelerate.utils import gather_object

    own = {k: v.tolist() for k, v in rng_tensors(device).items()}
    return {
        f"rank.{i}.{k}": torch.tensor(v, dtype=torch.uint8)
        for i, states in enumerate(gather_object([own]))
        for k, v in states.items()
    }


def _save_state(state_dir: Path, model, best_state, optimizer, rng: dict, counters: dict) -> None:
    """One file: the tensors and, in its metadata, the counters, so they can never disagree."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in best_state.items()}
    tensors |= optimizer_tensors(optimizer) | rng
    save_state(state_dir / STATE_FILE, tensors, counters)
