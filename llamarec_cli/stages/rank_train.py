"""``llamarec rank-train`` as a library call: (Q)LoRA fine-tuning of the verbalizer ranker (METHOD.md §5).

The loss is cross-entropy on the label tokens only (the answer letter and EOS), or with ``loss=letters`` over the
candidates' letter logits only, optionally with the retriever's log-probabilities added (``retriever_prior``). Every
``eval_every`` steps the validation subset is ranked and scored by NDCG@10; the best adapter is kept in PEFT's format
and training stops after ``patience`` validations without gain. The run lives in
``<workdir>/<dataset>/ranker/.<name>.partial/`` until it completes, with a resumable state (LoRA weights, optimizer,
RNG, counters) saved at every validation.

Runs unchanged under ``accelerate launch`` on several GPUs or machines: each process trains on its share of every
batch (gradients are averaged by DDP) and scores its share of the validation users.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import settings
from ..artifacts import (
    finish,
    load_state,
    optimizer_state,
    optimizer_tensors,
    read_json,
    read_sealed,
    restore_rng,
    rng_tensors,
    save_state,
)
from ..config import check_resume_restart
from ..data.artifact import Dataset, load_dataset
from ..errors import ArtifactError, ConfigError, TrainingDivergedError
from ..evaluation.metrics import MetricSums
from ..files import replace_dir, sha256_of, write_json
from ..layout import Workdir
from ..precision import DtypeChoice, choose_dtype
from ..ranking.config import RankerConfig, resolve_ranker_config
from ..ranking.examples import Subset, shuffle_candidates, training_examples, valid_subset
from ..ranking.fusion import GRID, choose_alpha, fused_ranks, rank, retriever_log_probabilities
from ..ranking.prompts import IGNORE, Example, PromptEncoder, pad_id, pad_left
from ..ranking.scoring import pass_token_cap, passes, score_examples
from ..ranking.verbalizer import letter_logits, position_ids
from ..training import Progress, Reporter, resolve_device, train_epochs
from ..version import versions
from ..workspace import main_process, run_lock
from .candidates import load_candidates
from .retrieve_train import close_at_exit, main_first

RANKER_EARLY_STOP_METRIC = "NDCG@10"  # the retriever stops on Recall@10: retrieval/train.py
FORMAT = "llamarec.ranker"
FORMAT_VERSION = 1


def ranker_dir(workdir: Path, dataset: str, name: str) -> Path:
    return Workdir(workdir).ranker(dataset, name)


def label_loss(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """Mean cross-entropy over the label tokens (label != -100), computing logits only where labels are.

    Rows are left-padded, so every label sits in the last few positions: ``logits_to_keep`` avoids the
    batch x length x vocabulary logits tensor (gigabytes at 1,536 tokens and 32,000 words).
    """
    labelled = (labels != IGNORE).any(dim=0).nonzero()
    span = labels.size(1) - int(labelled[0])
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        logits_to_keep=span + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()  # position t predicts token t + 1
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, -span:].reshape(-1), ignore_index=IGNORE)


def letter_loss(
    model, encoder, examples: list[Example], pad: int, device, retriever_prior: float, prompts=None
) -> torch.Tensor:
    """Mean cross-entropy of the true candidates over the candidates' letter logits, read as ranking reads them;
    with ``retriever_prior`` the retriever's log-probabilities, times it, are added first, so the letters only have to
    supply what the retriever's order lacks (a product of the two, as fusion combines them). ``prompts``: the
    examples' prompt ids, when the caller has them already."""
    k = max(len(e.candidates) for e in examples)
    prompts = prompts or [encoder.prompt_ids(e) for e in examples]
    batch = pad_left(prompts, pad).to(device)
    logits = letter_logits(model, batch.input_ids, batch.attention_mask, encoder.verbalizer.ids(k))
    offset = torch.full(logits.shape, -math.inf)  # a request with fewer candidates: the missing letters never win
    for row, e in enumerate(examples):
        n = len(e.candidates)
        offset[row, :n] = retriever_prior * retriever_log_probabilities(e.retriever_scores) if retriever_prior else 0
    targets = torch.tensor([e.target_index for e in examples], device=logits.device)
    return F.cross_entropy(logits + offset.to(logits.device), targets)


def accumulate_step(
    model,
    accelerator,
    encoder,
    examples: list[Example],
    pad: int,
    tokens_per_pass: int | None,
    loss: str = "lm",
    retriever_prior: float = 0.0,
):
    """Gradients of one step's mean loss, in forward passes of at most ``tokens_per_pass`` tokens each.

    Activations kept for the backward pass cost about a megabyte per token (30 layers of SmolLM2 in bf16), so a step
    of 16 prompts of 600 tokens in one pass needs gigabytes; passes of a prompt or two keep it near one, at the same
    speed on a CPU (scoring.py says why). Each pass's mean is weighted by its share of the step's label tokens (for the
    letters loss, of its examples), so the gradient is the whole batch's. Returns the step's loss."""
    from contextlib import nullcontext

    letters = loss == "letters"
    if letters:  # the prompts alone, each example counting once
        prompts = [encoder.prompt_ids(e) for e in examples]
        counts = [1] * len(examples)
    else:
        encoded = [encoder.training_ids(e) for e in examples]
        prompts = [ids for ids, _ in encoded]
        counts = [sum(label != IGNORE for label in labels) for _, labels in encoded]
    groups = passes([len(ids) for ids in prompts], len(examples), tokens_per_pass)
    total = torch.zeros((), device=accelerator.device)
    for n, group in enumerate(groups):
        weight = sum(counts[i] for i in group) / sum(counts)
        last = n == len(groups) - 1
        with nullcontext() if last else accelerator.no_sync(model):  # all-reduce the gradients once per step
            if letters:
                chosen, rows = [examples[i] for i in group], [prompts[i] for i in group]
                part = letter_loss(model, encoder, chosen, pad, accelerator.device, retriever_prior, rows)
            else:
                rows, labels = [prompts[i] for i in group], [encoded[i][1] for i in group]
                batch = pad_left(rows, pad, labels).to(accelerator.device)
                part = label_loss(model, batch.input_ids, batch.attention_mask, batch.labels)
            part = part * weight
            accelerator.backward(part)
        total += part.detach()
    return total


def subset_metrics(ranks: list[float]) -> dict[str, float]:
    sums = MetricSums(ks=(1, 5, 10))
    sums.add(torch.tensor(ranks, dtype=torch.float64))
    return sums.result()


def score_subset(
    model, encoder: PromptEncoder, examples: list[Example], batch_size: int, accelerator=None, tokens_per_pass=None
) -> list[torch.Tensor]:
    """The letter logits of every example, each process scoring its share; all of them, in the examples' order, on
    every process."""
    indices = list(range(len(examples)))
    several = accelerator is not None and accelerator.num_processes > 1
    if several:
        indices = indices[accelerator.process_index :: accelerator.num_processes]
    share = [examples[i] for i in indices]
    scores = score_examples(model, encoder, share, batch_size=batch_size, tokens_per_pass=tokens_per_pass)
    if several:
        from accelerate.utils import gather_object

        pairs = gather_object([(i, s.tolist()) for i, s in zip(indices, scores)])
        scores = [torch.tensor(s) for _, s in sorted(pairs)]
    return scores


def target_ranks(examples: list[Example], scores: list[torch.Tensor]) -> list[float]:
    """The true candidates' ranks in the ranker's order (ties keep the retriever's order)."""
    return [rank(s, e.target_index) for s, e in zip(scores, examples, strict=True)]


def sample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or n >= len(examples):
        return examples
    keep = sorted(torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    return [examples[i] for i in keep]


def _make_optimizer(params, config: RankerConfig, device: torch.device):
    if device.type == "cuda":
        try:  # the paper's paged 32-bit AdamW: optimizer state pages to CPU memory under pressure
            import bitsandbytes as bnb

            return bnb.optim.PagedAdamW32bit(params, lr=config.lr, weight_decay=0.0)
        except (ImportError, RuntimeError):
            pass
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)


def _add_lora(loaded, config: RankerConfig, gradient_checkpointing: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from ..ranking.models import lora_target_modules

    model = loaded.model
    if loaded.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_modules(model, config.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def train_ranker(dataset: str | Dataset, *, workdir: Path, name: str = "default", **options) -> dict:
    """Train, keep the best adapter, and return the manifest written beside it; ``options``: those of
    ``_train_ranker``. One run per ranker at a time: a second is refused with the first one's pid."""
    dataset_name = dataset if isinstance(dataset, str) else dataset.name
    what = f"rank-train of '{name}' on {dataset_name}"
    lock = run_lock(ranker_dir(workdir, dataset_name, name).parent, name, what) if main_process() else nullcontext()
    with lock:
        return _train_ranker(dataset, workdir=workdir, name=name, **options)


def _train_ranker(
    dataset_name: str | Dataset,
    *,
    workdir: Path,
    config: RankerConfig,
    name: str = "default",
    device: str = "auto",
    resume: bool = False,
    restart: bool = False,
    templates_dir: Path | None = None,
    trust_remote_code: bool = False,
    reporter: Reporter | None = None,
    stop_after_steps: int | None = None,
) -> dict:
    from accelerate import Accelerator

    from ..ranking.models import check_lora_rank, load_model, load_tokenizer
    from ..ranking.templates import load_template
    from ..ranking.verbalizer import derive_verbalizer

    check_resume_restart(resume, restart)
    reporter = reporter or Reporter()
    dataset = load_dataset(workdir, dataset_name)  # a name, or the Dataset the pipeline loaded
    dataset_name = dataset.name
    candidates, candidates_manifest = load_candidates(workdir, dataset, config.retriever)
    candidates_sha = candidates_manifest["file_sha256"]  # load_candidates checked the file against it
    final = ranker_dir(workdir, dataset_name, name)
    partial = Workdir.partial(final)
    state_path = Workdir.state(partial)
    _check_partial(workdir, partial, state_path, dataset, config, name, resume, restart, candidates_sha)
    k = candidates_manifest["k"]
    val = valid_subset(dataset, candidates, "val", k)
    if not val.examples:  # checked before minutes of loading and training, not after
        raise ArtifactError(
            f"No validation user of {dataset_name} has the true item among the {k} candidates of "
            f"'{config.retriever}', so nothing can pick the best adapter. Make more candidates: llamarec candidates "
            f"{dataset_name} --retriever {config.retriever} --k 20"
        )
    if config.negatives == "validation" and len(val.examples) <= (config.max_val_examples or len(val.examples)):
        raise ConfigError(too_few_validation_requests(0, len(val.examples), dataset_name))  # before loading a model

    asked = resolve_device(device)  # an unknown device or a missing GPU is refused here, with the accepted values
    accelerator = Accelerator(cpu=asked.type == "cpu")
    close_at_exit(accelerator)
    _check_gpu(asked, accelerator)
    if not accelerator.is_main_process:
        reporter = Reporter()  # one progress bar, from the main process
    torch.manual_seed(config.seed)
    template = load_template(config.template, templates_dir)
    # the answer letters on the tokenizer alone: a template that splits them is refused before the weights load
    derive_verbalizer(load_tokenizer(config.model, trust_remote_code), template).ids(k)
    check_lora_rank(config.lora_r, config.model, trust_remote_code)
    choice = _agreed_dtype(_resumed_dtype(partial, config, accelerator.device) if resume else config.dtype, accelerator)
    if resume:
        choice = dataclasses.replace(choice, reason=f"dtype {choice.dtype}, as the interrupted run trained")
    loaded = load_model(
        config.model,
        quantization=config.quantization,
        device=str(accelerator.device),
        dtype=choice.dtype,
        trust_remote_code=trust_remote_code,
    )
    loaded.dtype_reason = choice.reason
    reporter.note(loaded.dtype_reason)
    encoder = PromptEncoder(loaded.tokenizer, template, dataset.titles)
    encoder.verbalizer.ids(k)  # more candidates than letters: refused before any training
    val_examples = sample(val.examples, config.max_val_examples, config.seed)
    if config.negatives == "validation":
        examples = held_out_training_set(val, val_examples, config, dataset_name, accelerator.num_processes)
    else:
        if config.negatives == "retrieved":  # scoring many training prefixes takes a while on a CPU: say so
            reporter.note(f"Finding training requests whose true item {config.retriever} retrieves…")
        examples = _training_set(workdir, dataset, config, k, accelerator)
    if config.max_train_examples and len(examples) < config.max_train_examples:
        reporter.note(
            f"{len(examples):,} training examples, all that {dataset_name} gives with --negatives "
            f"{config.negatives} (fewer than --max-train-examples {config.max_train_examples:,})"
        )
    run = _prepare_run(loaded, config, accelerator, len(examples))
    if run.global_batch > len(examples):  # a typo of a few zeros would otherwise train one step an epoch unsaid
        reporter.note(
            f"A step's batch of {run.global_batch:,} is more than the {len(examples):,} training examples: each "
            "epoch is one step over all of them."
        )

    rerun = rank_train_command(dataset_name, name, workdir)
    trainer = _Trainer(run, config, encoder, examples, val_examples, partial, rerun, reporter)
    if resume and state_path.is_file():
        trainer.progress, trainer.best_scores = _restore(state_path, run)
    elif accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write_json(
            partial / "run.json",
            {
                "config": config.to_dict(),
                "dataset_checksum": dataset.checksum,
                "titles_checksum": dataset.titles_checksum,
                "candidates_sha256": candidates_sha,
                "dtype": loaded.dtype,
            },
        )
    accelerator.wait_for_everyone()
    stopped, interrupted = trainer.train(stop_after_steps)
    fusion = None
    if not interrupted and trainer.best_scores:
        fusion_users = fusion_examples(val, val_examples, config)
        fusion = _fusion(config, fusion_users, trainer.fusion_scores(fusion_users))
    manifest = _manifest(dataset, loaded, template, k, trainer, len(val.examples), stopped, interrupted)
    manifest |= {
        "candidates_sha256": candidates_sha,  # the sha load_candidates checked
        "retriever_weights_sha256": candidates_manifest["retriever_weights_sha256"],  # what serving retrieves with
        "fusion": fusion,
    }
    if interrupted:
        return manifest

    def write() -> None:
        if not (partial / "adapter").is_dir():
            raise ArtifactError(f"No adapter was saved in {partial}; the validation subset may be empty.")
        finish(partial, final, {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest})

    main_first(accelerator, write)  # the others return once it is written: a next stage in the same launch reads it
    return manifest


def _manifest(
    dataset: Dataset,
    loaded,
    template,
    k: int,
    trainer: _Trainer,
    val_subset_users: int,
    stopped: bool,
    interrupted: bool,
) -> dict:
    """What the ranker's manifest records: its inputs (each with a checksum), settings, training and validation."""
    config, run, progress, val_examples = trainer.config, trainer.run, trainer.progress, trainer.val_examples
    return {
        "dataset": {"name": dataset.name, "checksum": dataset.checksum, "titles_checksum": dataset.titles_checksum},
        "config": config.to_dict(),
        "model": {
            "name": config.model,
            "source": loaded.source,
            "quantization": loaded.quantization,
            "dtype": loaded.dtype,
            "dtype_reason": loaded.dtype_reason,
        },
        "template": {"name": template.name, "sha256": sha256_of(template.path)},
        "letter_token_ids": list(trainer.encoder.verbalizer.token_ids),
        "k": k,
        "train_examples": len(trainer.examples),
        "val_examples": len(val_examples),
        "val_subset_users": val_subset_users,
        "best_step": progress.best_step,
        "steps": progress.step,
        "stopped_early": stopped,
        "interrupted": interrupted,
        "train_seconds": round(progress.train_seconds, 1),
        "processes": run.accelerator.num_processes,
        "optimizer": type(getattr(run.optimizer, "optimizer", run.optimizer)).__name__,  # accelerate wraps it
        "device": str(run.accelerator.device),
        "val_metrics": progress.best_metrics,
        "val_order": "ranker" if config.validation_alpha is None else f"fused at alpha {config.validation_alpha:g}",
        "val_retriever_metrics": subset_metrics([e.target_index + 1.0 for e in val_examples]),  # the bar to clear
        "validations": progress.validations,
        "versions": versions("torch", "transformers", "peft"),
    }


def fusion_examples(val: Subset, early_stopping: list[Example], config: RankerConfig) -> list[Example]:
    """The validation users α is chosen on: a seeded sample of ``fusion_val_examples`` of them (all by default),
    never one trained on (``--negatives validation`` trains on those not held out to stop early). Drawn with the
    early-stopping sample's seed from the same list, so the larger of the two samples contains the smaller."""
    pool = early_stopping if config.negatives == "validation" else val.examples
    return sample(pool, config.fusion_val_examples, config.seed)


def _fusion(config: RankerConfig, examples: list[Example], scores: list[torch.Tensor]) -> dict:
    """The α chosen on validation (the grid, and the α a retriever prior trained for)."""
    trained = config.validation_alpha
    grid = sorted({*GRID, trained}) if trained else GRID
    chosen = choose_alpha(examples, scores, grid)
    return chosen | ({"trained_alpha": trained} if trained else {})


def scored_targets(examples: list[Example]) -> list[Example]:
    """The examples whose true item has a finite retriever score: with a retriever prior, one scored -inf (seen
    before) would make the loss infinite."""
    return [e for e in examples if math.isfinite(e.retriever_scores[e.target_index])]


def held_out_training_set(val: Subset, held_out: list[Example], config: RankerConfig, dataset: str, processes: int):
    """``--negatives validation``: the validation requests whose true item the retriever found, but for the users held
    out to pick the best step and α, in a seeded random order (at most ``max_train_examples``). The retriever never
    trained on these true items, so its order is as often right here as at test time (on training prefixes, which it
    trained on, about twice as often), and a ranker learns when to trust it."""
    keep_out = {e.user for e in held_out}
    rest = [e for e in val.examples if e.user not in keep_out]
    order = np.random.default_rng(config.seed).permutation(len(rest))[: config.max_train_examples]
    examples = [dataclasses.replace(rest[i]) for i in order]  # copies: shuffling must not touch the subset
    if config.shuffle_candidates:
        shuffle_candidates(examples, config.seed)
    if config.retriever_prior:
        examples = scored_targets(examples)
    if len(examples) < processes:  # a process without an example would leave DDP waiting for its gradients
        raise ConfigError(too_few_validation_requests(len(examples), len(val.examples), dataset, processes))
    return examples


def too_few_validation_requests(training: int, validation: int, dataset: str, processes: int = 1) -> str:
    return (
        f"--negatives validation trains on the validation users not held out to pick the best step: {training:,} "
        f"of {dataset}'s {validation:,} are left, fewer than the {processes} process(es) need. Hold out fewer: "
        f"rank-train --max-val-examples N (pipeline: --val-examples N), e.g. {max(1, validation // 5):,}, or train "
        f"on --negatives retrieved."
    )


def _training_set(workdir: Path, dataset: Dataset, config: RankerConfig, k: int, accelerator) -> list[Example]:
    """The training examples: random negatives, or the retriever's own candidates (``--negatives retrieved``)."""
    retriever = None
    if config.negatives == "retrieved":
        from .retrieve_train import load_retriever

        retriever, _ = load_retriever(workdir, dataset, config.retriever, device=str(accelerator.device))
    examples = training_examples(
        dataset,
        k=k,
        negatives=config.negatives,
        max_examples=config.max_train_examples,
        seed=config.seed,
        retriever=retriever,
        device=accelerator.device,
        shuffle=config.shuffle_candidates,
    )
    del retriever
    if config.retriever_prior:
        examples = scored_targets(examples)
    if len(examples) < accelerator.num_processes:
        raise ArtifactError(f"Dataset '{dataset.name}' gives {len(examples)} training examples; too few to train.")
    return examples


@dataclass
class _Run:
    """What a rank-train run trains with: the LoRA model (as accelerate wraps it, and unwrapped), its trainable
    weights, the optimizer and the schedule, and the batches."""

    model: Any
    unwrapped: Any
    trainable: list
    optimizer: Any
    scheduler: Any
    global_batch: int
    steps_per_epoch: int
    accelerator: Any


@dataclass
class _Trainer:
    """The loop of one rank-train run: trains ``run`` on ``examples``, validates on ``val_examples`` every
    ``config.eval_every`` steps, keeps the best adapter and the resume state in ``partial``."""

    run: _Run
    config: RankerConfig
    encoder: PromptEncoder
    examples: list[Example]
    val_examples: list[Example]
    partial: Path
    rerun: str  # the rank-train command, for the advice when the run diverges
    reporter: Reporter
    progress: Progress = field(default_factory=Progress)
    best_scores: list[list[float]] = field(default_factory=list)  # the best adapter's validation letter logits: α
    pad: int = 0
    token_cap: int | None = None

    def train(self, stop_after_steps: int | None) -> tuple[bool, bool]:
        """Train from ``progress`` on; validate once more at the end if steps went by since the last validation.
        Returns (stopped early, interrupted)."""
        config, accelerator = self.config, self.run.accelerator
        self.pad = pad_id(self.encoder.tokenizer)
        # training and its validations alike: beside the training state, a 4,096-token scoring pass (evaluate's)
        # raised rank-train's peak by 0.85 GiB (benchmarks/results/memory.md)
        self.token_cap = pass_token_cap(accelerator.device, config.tokens_per_pass)
        progress = self.progress
        if progress.validations and progress.bad >= config.patience:  # resumed after it stopped early (while α was
            return True, False  # being chosen): training stays over
        self.run.model.train()
        try:
            stopped, interrupted = train_epochs(
                progress,
                epochs=config.epochs,
                batches=self.run.steps_per_epoch,
                order=lambda epoch: torch.randperm(
                    len(self.examples), generator=torch.Generator().manual_seed(config.seed + epoch)
                ).tolist(),
                train_step=self.train_step,
                validate=self.validate,
                every=config.eval_every,
                reporter=self.reporter,
                stop_after_steps=stop_after_steps,
            )
            if not interrupted and (not progress.validations or progress.validations[-1]["step"] != progress.step):
                self.validate(0)  # the steps since the last validation count too
        finally:
            self.reporter.close()
        return stopped, interrupted

    def train_step(self, order: list[int], batch_index: int) -> float:
        run, accelerator = self.run, self.run.accelerator
        rows = order[batch_index * run.global_batch : (batch_index + 1) * run.global_batch]
        rows = rows[accelerator.process_index :: accelerator.num_processes]
        step_examples = [self.examples[i] for i in rows]
        config = self.config
        loss = accumulate_step(
            run.model,
            accelerator,
            self.encoder,
            step_examples,
            self.pad,
            self.token_cap,
            config.loss,
            config.retriever_prior,
        )
        value = accelerator.reduce(loss, reduction="mean").item()
        if not math.isfinite(value):  # stop before the broken adapter reaches a validation or a checkpoint
            self.diverged(f"The training loss became {value} at step {self.progress.step + 1}")
        accelerator.clip_grad_norm_(run.trainable, self.config.clip)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        return value

    def validate(self, batch_done: int) -> bool:
        """Score the validation examples, keep the adapter if it is the best, save the resume state; whether to stop
        (``patience`` validations without gain)."""
        run, config, progress, accelerator = self.run, self.config, self.progress, self.run.accelerator
        scores = score_subset(
            run.model, self.encoder, self.val_examples, config.eval_batch_size, accelerator, self.token_cap
        )
        if any(s.isnan().any() for s in scores):  # NaN letters would tie, and ties keep the retriever's order
            self.diverged(f"The letter logits became NaN at step {progress.step}")
        alpha = config.validation_alpha  # a ranker trained beside a retriever prior is judged beside it too
        ranks = fused_ranks(self.val_examples, scores, alpha) if alpha else target_ranks(self.val_examples, scores)
        metrics = subset_metrics(ranks)
        if progress.validated(metrics, RANKER_EARLY_STOP_METRIC, batch_done, run.steps_per_epoch):
            self.best_scores = [s.tolist() for s in scores]
            if accelerator.is_main_process:
                _save_adapter(run.unwrapped, self.partial / "adapter")
        self.reporter.validated(progress.step, metrics, progress.best, progress.bad, config.patience)
        if accelerator.is_main_process:
            counters = progress.counters(batch_done, best_scores=self.best_scores, scheduler=run.scheduler.state_dict())
            _save_resume_state(Workdir.state(self.partial), run, counters)
        accelerator.wait_for_everyone()
        return progress.bad >= config.patience

    def fusion_scores(self, examples: list[Example]) -> list[torch.Tensor]:
        """The best adapter's letter logits for ``examples``: the early-stopping users' from its validation, the
        others scored now with the best adapter put back in place of the last step's."""
        known = {e.user: s for e, s in zip(self.val_examples, self.best_scores, strict=True)}
        missing = [e for e in examples if e.user not in known]
        if missing:
            run, config = self.run, self.config
            self.reporter.note(
                f"Choosing the fusion α on {len(examples):,} validation users: scoring {len(missing):,} more with "
                "the best adapter"
            )
            _load_adapter(run.unwrapped, self.partial / "adapter")
            scores = score_subset(
                run.model, self.encoder, missing, config.eval_batch_size, run.accelerator, self.token_cap
            )
            known |= {e.user: s.tolist() for e, s in zip(missing, scores, strict=True)}
        return [torch.tensor(known[e.user]) for e in examples]

    def diverged(self, what: str):
        if self.run.accelerator.is_main_process:
            shutil.rmtree(self.partial, ignore_errors=True)  # resuming it would only diverge again
        raise TrainingDivergedError(
            f"{what}: the run diverged. Nothing was saved; the previous ranker, if any, is unchanged. "
            f"Try a lower learning rate: {self.rerun} --lr {self.config.lr / 10:g}"
        )


def _prepare_run(loaded, config: RankerConfig, accelerator, examples: int) -> _Run:
    """The LoRA model, its trainable weights, the optimizer and the warm-up schedule, prepared by accelerate."""
    from transformers import get_linear_schedule_with_warmup

    # Auto: on. Without it a step keeps every layer's activations for the backward pass, about 1.5 MB per prompt
    # token for SmolLM2 in bf16, and rank-train's peak grew to 2.9 GiB in 16 CPU steps (2.1 GiB with it, 27% slower).
    gradient_checkpointing = config.gradient_checkpointing is not False
    model = _add_lora(loaded, config, gradient_checkpointing)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(trainable, config, accelerator.device)
    global_batch = config.batch_size * accelerator.num_processes
    steps_per_epoch = examples // global_batch or 1
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, min(config.warmup_steps, total_steps), total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    return _Run(model, unwrapped, trainable, optimizer, scheduler, global_batch, steps_per_epoch, accelerator)


def _restore(state_path: Path, run: _Run) -> tuple[Progress, list[list[float]]]:
    """``--resume``: the LoRA weights, optimizer, RNG and schedule as the last validation saved them; the progress
    and the best adapter's validation scores."""
    tensors, saved = load_state(state_path)
    lora = {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}
    missing = {n for n, p in run.unwrapped.named_parameters() if p.requires_grad} - set(lora)
    if missing:
        raise ArtifactError(f"The resume state in {state_path} lacks {len(missing)} LoRA weights. Use --restart.")
    run.unwrapped.load_state_dict(lora, strict=False)  # only the LoRA weights: the base model is loaded as is
    run.optimizer.load_state_dict(optimizer_state(run.optimizer, tensors, run.accelerator.device))
    restore_rng(tensors, run.accelerator.device)
    progress = Progress.restored(saved)
    if "scheduler" in saved:
        run.scheduler.load_state_dict(saved["scheduler"])
        for group, lr in zip(run.optimizer.param_groups, run.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr  # the schedule's state holds the rate; the optimizer's groups were saved without it
    else:  # a state saved before llamarec stored the schedule's: step it to where the run stopped
        for _ in range(progress.step):
            run.scheduler.step()
    return progress, saved.get("best_scores", [])


def _save_resume_state(state_path: Path, run: _Run, counters: dict) -> None:
    """The LoRA weights, optimizer and RNG state, and the counters in the same file's metadata."""
    tensors = {f"lora.{n}": p for n, p in run.unwrapped.named_parameters() if p.requires_grad}
    tensors |= optimizer_tensors(run.optimizer) | rng_tensors(run.accelerator.device)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    save_state(state_path, tensors, counters)


def _save_adapter(model, folder: Path) -> None:
    """PEFT's standard format (adapter_config.json + adapter_model.safetensors), replaced atomically."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    replace_dir(tmp, folder)


def _load_adapter(model, folder: Path) -> None:
    """Put the adapter weights saved in ``folder`` (by ``_save_adapter``) back into the PEFT ``model``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
    missing = [key for key in result.missing_keys if "lora_" in key]
    if result.unexpected_keys or missing:  # loaded non-strictly: a mismatch would leave the last step's weights
        raise ArtifactError(
            f"The best adapter in {folder} does not fit the model being trained "
            f"({len(missing)} LoRA weights missing, {len(result.unexpected_keys)} unexpected)."
        )


def _check_partial(
    workdir: Path,
    partial,
    state_path,
    dataset: Dataset,
    config: RankerConfig,
    name,
    resume,
    restart,
    candidates_sha: str,
) -> None:
    """Never silently discard an interrupted run; never resume one with different settings or candidates."""
    rerun = rank_train_command(dataset.name, name, workdir)
    if resume:
        if not state_path.is_file():
            raise ArtifactError(f"Nothing to resume for ranker '{name}' on {dataset.name}. Start a run: {rerun}")
        saved = read_json(partial / "run.json", f"{rerun} --restart")
        if saved.get("dataset_checksum") != dataset.checksum or saved.get("titles_checksum") not in (
            None,  # a run begun before titles were recorded
            dataset.titles_checksum,
        ):
            raise ArtifactError(f"The interrupted run in {partial} was on another dataset version. {rerun} --restart")
        # its training and validation requests came from the candidates (and the retriever behind them) of then
        if not _on_candidates(saved, candidates_sha):
            raise ArtifactError(
                f"The candidates of '{config.retriever}' changed since the interrupted run in {partial} began "
                f"(retrained or exported again). Start afresh on the new ones: {rerun} --restart"
            )
        _refuse_changes(saved["config"], config)
    elif state_path.is_file() and not restart:
        raise ArtifactError(
            f"An interrupted rank-train run exists in {partial}. "
            f"Continue it with: {rerun} --resume (or discard it with --restart)."
        )


def resumable_on(workdir: Path, dataset: str, name: str, candidates_sha: str) -> bool:
    """Whether ranker ``name`` has an interrupted run that ``--resume`` can continue on these candidates."""
    partial = Workdir.partial(ranker_dir(workdir, dataset, name))
    if not Workdir.state(partial).is_file():
        return False
    try:
        saved = read_json(partial / "run.json", "--restart")
    except ArtifactError:
        return True  # damaged: --resume says so, with what to do
    return not isinstance(saved, dict) or _on_candidates(saved, candidates_sha)


def _on_candidates(saved_run: dict, candidates_sha: str) -> bool:
    """Whether an interrupted run (its run.json) began on these candidates; one from before it recorded them did."""
    return saved_run.get("candidates_sha256", candidates_sha) == candidates_sha


def _check_gpu(asked: torch.device, accelerator) -> None:
    """accelerate, not --device, picks the GPU (the current one, or the process's under accelerate launch): a
    --device cuda:N it would not use is refused rather than ignored."""
    if asked.type != "cuda" or asked.index is None or accelerator.num_processes > 1:
        return
    used = accelerator.device
    used = torch.device("cuda", torch.cuda.current_device()) if used.index is None else used
    if used != asked:
        raise ConfigError(
            f"rank-train would run on {used}, not {asked}: choose the GPU with CUDA_VISIBLE_DEVICES={asked.index} "
            "and --device cuda."
        )


def _agreed_dtype(requested: str, accelerator) -> DtypeChoice:
    """One dtype for every process of a run. ``auto`` is decided by the main process and sent to the others: each
    process's own CPU probe can land on either side of the threshold on a busy machine, and processes computing in
    different dtypes cannot exchange gradients."""
    if accelerator.num_processes == 1 or requested != "auto":
        return choose_dtype(requested, accelerator.device)
    from accelerate.utils import broadcast_object_list

    decided = [choose_dtype(requested, accelerator.device).to_dict() if accelerator.is_main_process else None]
    broadcast_object_list(decided)
    return DtypeChoice(**decided[0])


def _resumed_dtype(partial: Path, config: RankerConfig, device: torch.device) -> str:
    """The dtype the interrupted run trained in: ``--dtype auto`` is decided again on each machine (a new probe, other
    threads), and a run must not switch halfway. Runs from before llamarec recorded it trained in fp32 on a CPU,
    bf16 on a GPU that supports it, as ``auto`` still chooses there."""
    saved = read_json(partial / "run.json", "the same rank-train command with --restart")
    if "dtype" in saved:
        return saved["dtype"]
    return "fp32" if config.dtype == "auto" and device.type == "cpu" else config.dtype


def rank_train_command(dataset: str, name: str, workdir: Path | None, trained: dict | None = None) -> str:
    """The command that trains ranker ``name``; given the ``trained`` config (a manifest's), with every setting of it
    that the defaults would not give: copied as is, a bare command would train Llama 2 7B on lrurec's candidates."""
    named = "" if name == "default" else f" --name {name}"
    settings_given = ""
    if trained:
        defaults = resolve_ranker_config(dataset, {})[0].to_dict()
        changed = {k: v for k, v in trained.items() if k in defaults and v != defaults[k] and v is not None}
        settings_given = "".join(f" --set {shlex.quote(f'{k}={_as_setting(v)}')}" for k, v in changed.items())
    return settings.command_for(f"llamarec rank-train {dataset}{named}{settings_given}", workdir)


def _as_setting(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_ranker_manifest(workdir: Path, dataset: Dataset, name: str) -> dict:
    """The manifest of a trained ranker that matches ``dataset`` (refused otherwise, with what to rerun)."""
    folder = ranker_dir(workdir, dataset.name, name)
    rerun = rank_train_command(dataset.name, name, workdir)
    path = folder / "manifest.json"
    if not path.is_file():
        if Workdir(workdir).resumable(folder):
            raise ArtifactError(
                f"Ranker '{name}' for {dataset.name} was interrupted before it finished. Continue it with: "
                f"{rerun} --resume"
            )
        trained = sorted(f.name for f in folder.parent.glob("*") if (f / "manifest.json").is_file())
        known = f" Trained rankers there: {', '.join(trained)}." if trained else ""
        raise ArtifactError(f"No trained ranker '{name}' for {dataset.name} in {workdir}.{known} Run first: {rerun}")
    manifest = read_sealed(path, rerun, format=FORMAT, version=FORMAT_VERSION)
    try:
        same = manifest["dataset"]["checksum"] == dataset.checksum
        RankerConfig(**manifest["config"])  # every field present and valid
        if type(manifest["k"]) is not int or manifest["k"] < 1 or not isinstance(manifest["candidates_sha256"], str):
            raise TypeError
    except (KeyError, TypeError, ConfigError):
        raise ArtifactError(f"{path} is damaged (a field is missing or invalid). Rerun: {rerun}") from None
    retrain = rank_train_command(dataset.name, name, workdir, manifest["config"])
    if not same:
        trained_on = manifest["dataset"].get("name", dataset.name)
        which = (
            f"dataset '{trained_on}'" if trained_on != dataset.name else f"another version of dataset '{trained_on}'"
        )
        raise ArtifactError(f"Ranker '{name}' was trained on {which}. Rerun: {retrain}")
    if manifest["dataset"].get("titles_checksum", dataset.titles_checksum) != dataset.titles_checksum:
        raise ArtifactError(  # (a ranker trained before titles were recorded is not checked)
            f"Ranker '{name}' was trained on other titles of {dataset.name}: they changed since (preprocess ran "
            f"again, e.g. with other raw files or --unescape-titles), and its prompts would show titles it never "
            f"read. Rerun: {retrain}"
        )
    return manifest


def resumed_config(workdir: Path, dataset: str, name: str, flags: dict) -> tuple[RankerConfig, dict[str, str]]:
    """The config of the interrupted run that ``--resume`` continues: its values stand, and a flag that contradicts
    one is refused rather than mixed in (as ``retrieve-train --resume`` does)."""
    from ..retrieval.contract import build_config

    partial = Workdir.partial(ranker_dir(workdir, dataset, name))
    rerun = rank_train_command(dataset, name, workdir)
    if not Workdir.state(partial).is_file():
        raise ArtifactError(
            f"Nothing to resume for ranker '{name}' on {dataset} (no run reached its first validation). "
            f"Start a run: {rerun}"
        )
    saved = read_json(partial / "run.json", f"{rerun} --restart")
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ArtifactError(f"{partial / 'run.json'} is damaged. Start afresh: {rerun} --restart")
    config, sources = build_config(RankerConfig, [("checkpoint", saved["config"]), ("flag", flags)])
    _refuse_changes(saved["config"], config)
    return config, sources


AFTER_TRAINING = {"fusion_val_examples"}  # settings used once training is over: --resume may change them


class ResumeMismatchError(ConfigError):
    """``--resume`` asked with settings other than the interrupted run's (``changed``: "key=saved value" items)."""

    def __init__(self, changed: list[str]):
        self.changed = changed
        super().__init__(
            f"--resume continues a run with {', '.join(changed)}; drop the flags that change it, or --restart."
        )


def _refuse_changes(saved: dict, config: RankerConfig) -> None:
    """``--resume`` continues the interrupted run with its settings: one that ``config`` changes is refused."""
    # a setting the saved run predates had its default then (a run from before `loss` existed trained the lm loss)
    saved = RankerConfig().to_dict() | saved
    changed = [f"{k}={v}" for k, v in saved.items() if config.to_dict().get(k) != v and k not in AFTER_TRAINING]
    if changed:
        raise ResumeMismatchError(changed)
