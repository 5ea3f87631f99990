"""``llamarec pipeline``: every stage in order, with a budget that fits a CPU, reusing what is already done.

preprocess → retrieve-train → candidates → rank-train → evaluate, each through the same library call as its own
command. A stage whose artifact exists and matches is skipped, and an interrupted retriever or ranker run is resumed,
so running the pipeline again after Ctrl-C continues where it stopped. The defaults are the CPU budget of the README's
first command (ml-100k, smollm2-135m, about 5 minutes on 2 cores); every budget is an option.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import option
from ..errors import ArtifactError, ConfigError, TrainingDivergedError
from ..layout import Workdir
from ..ranking.config import check_negatives

if TYPE_CHECKING:
    from ..training import Reporter


@dataclass
class Budget:
    """What the pipeline spends on each stage; each field is a flag of ``llamarec pipeline``."""

    # ~1,000 LRURec steps on ml-100k; the full early-stopped run takes hours on a CPU
    retriever_epochs: int = option(20, "Most LRURec epochs.")
    train_examples: int = option(128, "Ranker training examples.")
    # all of ml-100k's validation subset (about 120 users)
    val_examples: int = option(128, "Validation users ranked per validation (early stopping; α is chosen on all).")
    eval_every: int = option(16, "Validate the ranker every N steps.")
    batch_size: int = option(4, "Ranker examples per step.")
    # a few dozen steps: a larger step than the paper's 1e-4 (its runs take thousands)
    lr: float = option(5e-4, "Ranker learning rate.")
    warmup_steps: int = option(4, "Ranker warm-up steps (at most the number of training steps).")
    # The retriever's own candidates, in its order, as at test time: at a CPU budget they beat the paper's random
    # negatives by 0.08 NDCG@10 on the ml-100k test subset (benchmarks/results/ranking.md).
    negatives: str = option(
        "retrieved",
        "Training candidates: the retriever's own (retrieved), its validation requests (validation) or random.",
    )
    test_examples: int | None = option(None, "Rank a sample of this many test users.")

    def check(self) -> None:
        """Each value refused in the pipeline's own flag names (the stages' configs would name their fields)."""
        import math

        for name in ("retriever_epochs", "train_examples", "val_examples", "eval_every", "batch_size", "test_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {value}).")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a positive number (got {self.lr}).")


def run_pipeline(
    dataset: str,
    *,
    workdir: Path,
    model: str = "smollm2-135m",
    budget: Budget | None = None,
    raw_dir: Path | None = None,
    device: str = "auto",
    log: Callable[[str], None] = lambda message: None,
    reporter: Reporter | None = None,
    retriever_reporter: Callable[[int], Reporter] | None = None,
) -> dict:
    """Run (or continue) the whole pipeline and return the evaluation report.

    ``reporter``: the ranker training's progress reporter; ``retriever_reporter``: makes the retriever training's,
    as ``train_retriever(reporter=...)`` does. The CLI passes its ``RichReporter``; without them nothing is shown.
    """
    from ..data.artifact import load_dataset
    from ..retrieval.checkpoint import read_manifest, retriever_dir
    from .candidates import export_candidates, load_candidates
    from .evaluate import evaluate
    from .preprocess import preprocess
    from .rank_train import ResumeMismatchError, ranker_dir, resumable_on, train_ranker
    from .retrieve_train import resumed_config, train_retriever

    budget = budget or Budget()
    layout = Workdir(workdir)
    config = _check_before_work(dataset, model, budget, device)
    try:
        data = load_dataset(workdir, dataset)
        log(f"1/5 preprocess: {dataset} is already in {workdir}.")
    except ArtifactError:
        log(f"1/5 preprocess {dataset}")
        data = preprocess(dataset, workdir=workdir, raw_dir=raw_dir, log=log)

    release_memory()
    folder = retriever_dir(workdir, dataset, "lrurec")
    try:
        epochs = read_manifest(workdir, data, "lrurec")["config"]["max_epochs"]
        # reused whatever its budget (it may come from retrieve-train): say so when the flag asks for another
        other = ""
        if epochs != budget.retriever_epochs:
            other = (
                f" (trained with at most {epochs} epochs; --retriever-epochs {budget.retriever_epochs} does not "
                f"retrain it: remove {folder} to train again)"
            )
        log(f"2/5 retrieve-train: the LRURec checkpoint exists{other}.")
    except ArtifactError:
        resume = layout.resumable(folder)
        epochs = resumed_config(workdir, data, "lrurec", {})[0].max_epochs if resume else budget.retriever_epochs
        log(
            f"2/5 retrieve-train (LRURec, at most {epochs} epochs){' — resuming its interrupted run' if resume else ''}"
        )
        train_retriever(
            data,
            workdir=workdir,
            flags={} if resume else {"max_epochs": budget.retriever_epochs},
            device=device,
            resume=resume,
            reporter=retriever_reporter,
        )

    release_memory()
    try:
        _, candidates = load_candidates(workdir, data)
        log("3/5 candidates: up to date.")
    except ArtifactError:
        log("3/5 candidates (top 20)")
        candidates = export_candidates(data, workdir=workdir, device=device)
    candidates_sha = candidates["file_sha256"]  # checked against the file by load_candidates, or just written

    release_memory()
    trained = _finished_ranker(workdir, data, candidates_sha)
    if trained is not None:
        _refuse_other_settings(trained["config"], config.to_dict(), ranker_dir(workdir, dataset, "default"))
        log("4/5 rank-train: the ranker exists.")
    else:
        # a run interrupted on candidates exported again since (step 3, after a retrained retriever) starts afresh
        resume = resumable_on(workdir, data.name, "default", candidates_sha)
        log(f"4/5 rank-train ({model}, {budget.train_examples} examples){' — resuming' if resume else ''}")
        try:
            train_ranker(
                data,
                workdir=workdir,
                config=config,
                device=device,
                resume=resume,
                restart=not resume,
                reporter=reporter,
            )
        except ResumeMismatchError as exc:  # the advice in pipeline's own terms: it has no --resume or --restart
            partial = layout.partial(ranker_dir(workdir, dataset, "default"))
            raise ConfigError(
                f"The interrupted ranker training ran with {', '.join(exc.changed)}: run the pipeline with those "
                f"settings to continue it, or remove {partial} to start it afresh."
            ) from None
        except TrainingDivergedError:
            raise TrainingDivergedError(
                "The ranker's training diverged (its loss became NaN or infinite); nothing was saved. Run the pipeline "
                f"again with a lower --lr (e.g. --lr {budget.lr / 10:g})."
            ) from None

    release_memory()
    log("5/5 evaluate")
    return evaluate(data, workdir=workdir, device=device, max_examples=budget.test_examples, log=log)


def _check_before_work(dataset: str, model: str, budget: Budget, device: str):
    """Every stage's options, checked before the first stage runs: a bad --batch-size or --model is refused in a
    second, not after preprocessing and an hour of retriever training. Returns the ranker's config."""
    from ..ranking.config import RankerConfig
    from ..ranking.models import load_tokenizer, model_source
    from ..training import resolve_device
    from .retrieve_train import resolve_config, retriever_class

    check_negatives(budget.negatives)
    budget.check()
    resolve_config(retriever_class("lrurec"), dataset, {"max_epochs": budget.retriever_epochs})
    config = RankerConfig(
        model=model,
        max_train_examples=budget.train_examples,
        max_val_examples=budget.val_examples,
        eval_every=budget.eval_every,
        batch_size=budget.batch_size,
        lr=budget.lr,
        warmup_steps=budget.warmup_steps,
        negatives=budget.negatives,
    )
    resolve_device(device)
    load_tokenizer(model_source(model))  # the model exists (an alias is built now, as the ranker will need it)
    return config


def release_memory() -> None:
    """Give the memory a finished stage freed back to the system before the next one starts.

    glibc keeps freed heap pages for reuse by the same process, so in one process the stages' peaks stack up: after
    LRURec's training 0.8 GiB stays resident, after the ranker's 1.9 GiB (1.1 of it free but kept), and the
    pipeline peaked at 4.1 GiB where no stage alone needs 2.6. ``malloc_trim`` returns it; elsewhere a no-op."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, macOS)
            pass


def _finished_ranker(workdir: Path, data, candidates_sha: str) -> dict | None:
    """The manifest of the pipeline's finished ranker, or None if there is none for the current candidates."""
    from .rank_train import load_ranker_manifest

    try:
        trained = load_ranker_manifest(workdir, data, "default")
    except ArtifactError:
        return None
    return trained if trained["candidates_sha256"] == candidates_sha else None


BUDGET_FIELDS = ("model", "max_train_examples", "max_val_examples", "eval_every", "batch_size", "lr", "negatives")


def _refuse_other_settings(trained: dict, wanted: dict, folder: Path) -> None:
    """A finished ranker trained with another budget is neither reused as if it were this one nor overwritten."""
    differ = [f"{k} {trained.get(k)} (now {wanted[k]})" for k in BUDGET_FIELDS if trained.get(k) != wanted[k]]
    if differ:
        raise ArtifactError(
            f"The ranker in {folder} was trained with other settings: {', '.join(differ)}. "
            f"Run with the same budget to reuse it, or move that folder away to train again."
        )
