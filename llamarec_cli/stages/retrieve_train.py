"""``llamarec retrieve-train`` as a library call: resolve the config, train, evaluate, write the checkpoint.

Runs unchanged under ``accelerate launch`` on several GPUs, machines or CPU processes: the processes share each batch
and the validation users (``retrieval/train.py``), and the main process alone holds the lock and writes.
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch

from .. import settings
from ..artifacts import finish, read_json, verify_files
from ..config import check_resume_restart
from ..data.artifact import Dataset, load_dataset
from ..errors import ArtifactError, ConfigError, LlamarecError, TrainingDivergedError, UnknownNameError
from ..files import write_json
from ..layout import Workdir
from ..retrieval.checkpoint import FORMAT, FORMAT_VERSION, partial_dir, read_manifest, retriever_dir
from ..retrieval.contract import Retriever, RetrieverConfig, build_config
from ..retrieval.data import eval_set
from ..retrieval.evaluate import evaluate
from ..retrieval.train import fit
from ..training import Reporter, resolve_device
from ..version import versions
from ..workspace import run_lock, writing

DEFAULT_RETRIEVER = "lrurec"


def retriever_class(name: str) -> type[Retriever]:
    from .. import plugins  # lazily: the plugins load on first use

    return plugins.retrievers().get(name)  # unknown names list the known ones


def resolve_config(cls: type[Retriever], dataset: str, flags: dict) -> tuple[RetrieverConfig, dict[str, str]]:
    """Config defaults < the dataset's suggestions < the retriever's per-dataset values < the user's flags."""
    from .. import plugins  # lazily: the plugins load on first use

    registry = plugins.datasets()
    dataset_defaults = dict(registry.get(dataset).retrieval_defaults) if dataset in registry else {}
    layers = [("dataset", dataset_defaults), ("retriever", cls.dataset_defaults.get(dataset, {})), ("flag", flags)]
    return build_config(cls.Config, layers)


def resumed_config(
    workdir: Path, dataset: Dataset, retriever: str, flags: dict, resume: bool = True
) -> tuple[RetrieverConfig, dict]:
    """The config of the interrupted run that ``--resume`` continues. Its values stand: a flag that contradicts one
    is refused rather than mixed in. (``resume=False``: the fresh run's, as the main process of several wrote it.)"""
    partial = partial_dir(workdir, dataset.name, retriever)
    rerun = rerun_command(dataset.name, retriever, workdir)
    if not (partial / "run.json").is_file():
        raise ArtifactError(f"Nothing to resume for retriever '{retriever}' on {dataset.name}. Start a run: {rerun}")
    saved = read_json(partial / "run.json", f"{rerun} --restart")
    if not isinstance(saved, dict) or saved.get("dataset_checksum") != dataset.checksum:
        raise ArtifactError(
            f"The interrupted run in {partial} was on another version of dataset '{dataset.name}' (or its run.json "
            f"is damaged). Start afresh: {rerun} --restart"
        )
    layers = [("checkpoint", saved["config"])] + ([("flag", flags)] if resume else [])
    config, _ = build_config(retriever_class(retriever).Config, layers)
    before = {**config.to_dict(), **saved["config"]}  # a setting newer than the run has its default
    changed = [f"{k}={before[k]}" for k, v in config.to_dict().items() if before[k] != v]
    if changed:
        raise ArtifactError(
            f"--resume continues a run with {', '.join(changed)}; "
            f"drop the flags that change it, or start afresh with --restart."
        )
    return config, saved["sources"]


def train_retriever(
    dataset_name: str | Dataset,
    *,
    workdir: Path,
    retriever: str = DEFAULT_RETRIEVER,
    flags: dict | None = None,
    device: str = "auto",
    resume: bool = False,
    restart: bool = False,
    reporter: Callable[[int], Reporter] | None = None,
    log: Callable[[str], None] = lambda message: None,
    stop_after_steps: int | None = None,
) -> dict:
    """Train a retriever on a preprocessed dataset; return the manifest written beside the checkpoint.

    ``reporter`` makes the training's progress reporter once the config is known, from its ``max_epochs`` (the CLI
    passes ``cli.progress.RichReporter``); without one the training reports nothing.
    """
    check_resume_restart(resume, restart)
    dataset = load_dataset(workdir, dataset_name)  # a name, or the Dataset the pipeline loaded
    dataset_name = dataset.name
    cls = retriever_class(retriever)
    device_ = resolve_device(device)
    accelerator = launched_accelerator(device)
    if accelerator is not None:
        device_ = accelerator.device
    main = accelerator is None or accelerator.is_main_process
    partial = partial_dir(workdir, dataset_name, retriever)
    what = f"retrieve-train of '{retriever}' on {dataset_name}"
    with ExitStack() as held:

        def begin():  # the main process holds the lock, checks the flags and writes run.json
            held.enter_context(run_lock(partial.parent, retriever, what))
            return _start_or_resume(workdir, dataset, cls, retriever, flags or {}, resume, restart)

        begun = main_first(accelerator, begin)
        config, sources = begun if main else resumed_config(workdir, dataset, retriever, flags or {}, resume=resume)
        log(f"Training {retriever} on {dataset_name} ({dataset.num_items:,} items) on {device_}.")
        torch.manual_seed(config.seed)
        try:
            model = cls(config, dataset.num_items)
        except (RuntimeError, MemoryError) as exc:  # e.g. --set hidden=1000000000: petabytes of embeddings
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"Cannot build {retriever} with this config ({first}): is a size setting too large?"
            ) from None
        progress_reporter = reporter(config.max_epochs) if reporter and main else Reporter()
        began = time.perf_counter()
        try:
            result = fit(
                model,
                dataset,
                device=device_,
                state_dir=Workdir.training(partial),
                resume=resume,
                reporter=progress_reporter,
                stop_after_steps=stop_after_steps,
                accelerator=accelerator,
            )
        except TrainingDivergedError as exc:
            if main:
                shutil.rmtree(partial, ignore_errors=True)  # resuming it would only diverge again
            advice = (
                f"The loss was not finite before any update, so no learning rate helps: the retriever '{retriever}' "
                "itself gives non-finite numbers (its train_queries or item_table)."
                if exc.untrained
                else f"Try a lower learning rate: {rerun_command(dataset_name, retriever, workdir)} "
                f"--lr {config.lr / 10:g}"
            )
            raise TrainingDivergedError(
                f"{exc} Nothing was saved; the previous checkpoint, if any, is unchanged. {advice}"
            ) from None
        if result.interrupted:
            log(f"Stopped after {result.steps} steps as asked; continue with --resume.")
            return {}
        metrics = {"val": result.best_metrics}  # measured on these very weights when they became the best
        metrics["test"] = evaluate(model, eval_set(dataset, "test"), device_, accelerator)
        manifest = {
            "device": str(device_),
            "processes": accelerator.num_processes if accelerator else 1,
            "metrics": metrics,
            "training": {
                "steps": result.steps,
                "epochs": result.epochs,
                "best_step": result.best_step,
                "stopped_early": result.stopped_early,
                "train_seconds": round(result.train_seconds, 2),
                "wall_seconds": round(time.perf_counter() - began, 2),
                "steps_per_second": round(result.steps_per_second, 3),
                "validations": result.validations,
            },
        }

        def write() -> dict:
            return write_checkpoint(workdir, dataset, retriever, model, manifest, sources)

        # the others return once it is written: a next stage in the same launch (pipeline, script) reads it at once
        return main_first(accelerator, write) or {}  # the manifest written, on the main process


def close_at_exit(accelerator) -> None:
    """When the process ends, let go of what ``accelerator`` prepared and close its process group. A process whose
    DDP model still held the gloo group when Python exited was aborted in the C++ teardown ("terminate called
    without an active exception") in about one launch in twelve; none in 106 once closed (70 closing at the end of
    a stage, 36 at exit). At exit, not at the end of a stage: the pipeline, or a script, may run the next stage on
    the same group."""
    if accelerator.num_processes < 2:
        return

    def close():
        accelerator.free_memory()  # drops accelerate's references to the DDP model ...
        gc.collect()  # ... and its reference cycles (free_memory collects before it drops them)
        accelerator.end_training()  # destroys the process group (a no-op once it is destroyed)

    atexit.register(close)


def launched_accelerator(device: str):
    """An ``accelerate.Accelerator`` when this process is one of several started by ``accelerate launch``, else
    None (one process trains as it always did, with no accelerate in the way). The retriever trains in fp32 whatever
    the user's ``accelerate config`` says: its backward and optimizer do not go through accelerate."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")
    close_at_exit(accelerator)
    return accelerator


def main_first(accelerator, step: Callable):
    """``step()`` on the main process alone, the others waiting; an error there is raised in every process (the
    others would otherwise wait for it forever). Returns the step's result on the main process, None elsewhere."""
    if accelerator is None:
        return step()
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = step()
        except LlamarecError as exc:
            error = exc
    from accelerate.utils import broadcast_object_list

    message = broadcast_object_list([None if error is None else str(error)])[0]
    if error is not None:
        raise error
    if message is not None:
        raise LlamarecError(message)
    return result


def rerun_command(dataset: str, retriever: str, workdir: Path | None) -> str:
    named = "" if retriever == DEFAULT_RETRIEVER else f" --retriever {retriever}"
    return settings.command_for(f"llamarec retrieve-train {dataset}{named}", workdir)


MAX_UNIFORM_NEGATIVES = 1 << 20  # a step's draw; a far larger one fails in torch (10^12: a traceback in the loss)


def _start_or_resume(workdir, dataset, cls, retriever, flags, resume, restart) -> tuple[RetrieverConfig, dict]:
    """The config to train with: the interrupted run's (--resume) or a fresh one, whose partial folder is made."""
    if resume:
        return resumed_config(workdir, dataset, retriever, flags)
    config, sources = resolve_config(cls, dataset.name, flags)
    if config.loss == "sampled" and config.uniform_negatives > MAX_UNIFORM_NEGATIVES:  # drawn with replacement
        raise ConfigError(
            f"--uniform-negatives {config.uniform_negatives:,} is more than the {MAX_UNIFORM_NEGATIVES:,} a step can "
            f"draw; {dataset.name} has {dataset.num_items:,} items, which --loss full scores all of."
        )
    partial = partial_dir(workdir, dataset.name, retriever)
    # Only a run that saved training state is worth keeping; one that failed before its first validation is not.
    if Workdir.state(partial).is_file() and not restart:
        raise ArtifactError(
            f"An interrupted run of '{retriever}' on {dataset.name} is in {partial}. Continue it with: "
            f"{rerun_command(dataset.name, retriever, workdir)} --resume (or discard it with --restart)."
        )
    shutil.rmtree(partial, ignore_errors=True)
    with writing(workdir, workdir=True):
        partial.mkdir(parents=True)
    run = {"config": config.to_dict(), "sources": sources, "dataset_checksum": dataset.checksum}
    write_json(partial / "run.json", run)
    return config, sources


def write_checkpoint(workdir: Path, dataset: Dataset, name: str, model: Retriever, extra: dict, sources=None) -> dict:
    """Save ``model`` as the complete checkpoint of retriever ``name`` for ``dataset`` (replacing any older one)."""
    from .. import plugins  # lazily: the plugins load on first use

    partial = partial_dir(workdir, dataset.name, name)
    partial.mkdir(parents=True, exist_ok=True)
    model.save(partial)
    manifest = {
        "retriever": name,
        "plugin": plugins.retrievers().owner(name),
        "dataset": {"name": dataset.name, "checksum": dataset.checksum},
        "num_items": dataset.num_items,
        "config": model.config.to_dict(),
        "config_sources": sources or {},
        **extra,
        "versions": versions("torch"),
    }
    finish(
        partial,
        retriever_dir(workdir, dataset.name, name),
        {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest},
    )
    return manifest


def load_retriever(workdir: Path, dataset: Dataset, name: str, device="cpu") -> tuple[Retriever, dict]:
    """A trained retriever that matches ``dataset`` (refused otherwise, with what to rerun) and its manifest."""
    manifest = read_manifest(workdir, dataset, name)
    folder = retriever_dir(workdir, dataset.name, name)
    try:
        cls = retriever_class(name)
    except UnknownNameError:  # trained with a plugin since uninstalled: say which
        raise ArtifactError(
            f"The retriever in {folder} is '{name}' of plugin '{manifest.get('plugin', '?')}', which is not loaded "
            f"now: install that plugin again (or let LLAMAREC_PLUGINS load it)."
        ) from None
    rerun = rerun_command(dataset.name, name, workdir)
    device_ = resolve_device(device)  # a missing GPU is the user's flag, not the checkpoint's fault
    verify_files(folder, manifest, rerun)
    try:
        model = cls.load(folder, device=device_)
    except ArtifactError as exc:
        raise ArtifactError(f"{exc} Rerun: {rerun}") from exc
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:  # ValueError covers bad JSON
        raise ArtifactError(f"The checkpoint in {folder} cannot be loaded ({exc}). Rerun: {rerun}") from exc
    return model.eval(), manifest
