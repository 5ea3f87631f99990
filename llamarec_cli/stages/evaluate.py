"""``llamarec evaluate`` as a library call: rank the test subset and report the paper's two views (METHOD.md §5).

- Valid retrieval subset (paper Table 3): test users whose true item is among the retriever's candidates; the
  ranker's order next to the retriever's own order of the same candidates.
- Overall (paper Table 1): all test users. For k up to the number of candidates, users outside the subset
  contribute 0, so overall = subset metric x hit-rate; the retriever's overall figures are its full ranking.

The report goes to ``<workdir>/<dataset>/reports/evaluate-<ranker>.{json,md}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import settings
from ..artifacts import verify_files
from ..data.artifact import Dataset, load_dataset
from ..errors import ArtifactError, ConfigError
from ..evaluation.metrics import paired_difference
from ..files import sha256_of, write_json
from ..layout import Workdir
from ..ranking.examples import valid_subset
from ..ranking.fusion import fused_ranks, order, resolve_alpha
from ..training import resolve_device
from ..workspace import ensure_writable
from .candidates import candidates_paths, load_candidates
from .rank_train import (
    load_ranker_manifest,
    rank_train_command,
    ranker_dir,
    sample,
    score_subset,
    subset_metrics,
    target_ranks,
)
from .retrieve_train import DEFAULT_RETRIEVER, retriever_class

REPORT_KS = (5, 10)  # the cut-offs the ranker report shows (evaluation.metrics.KS: those computed)
NAMES = ("MRR", "NDCG", "Recall")


def _pick(metrics: dict, ks=REPORT_KS) -> dict[str, float]:
    return {f"{name}@{k}": metrics.get(f"{name}@{k}", 0.0) for k in ks for name in NAMES}


def paired_summary(d: dict, who: str = "Ranker") -> str:
    interval = f" ± {d['half_width']:.4f} (95%," if d["half_width"] is not None else " ("
    return (
        f"{who} minus retriever order, {d['metric']} on the subset: {d['difference']:+.4f}{interval} paired over "
        f"{d['users']:,} users); the true item ranked higher for {d['better']:,} users, lower for {d['worse']:,}."
    )


def ranker_plan(
    workdir: Path, dataset, ranker: str, adapter: str | None, retriever: str | None, fusion: str
) -> tuple[str, float | None, str, dict | None]:
    """Whose candidates the ranker ranks (``retriever``, default: the trained ranker's, else lrurec), and the fusion
    α to use with where it came from, as the trained ranker's manifest says (returned too; None without a trained
    ranker). Options the plan would ignore are refused: a retriever other than the trained ranker's, a ``fusion``
    without a ranker, a bad ``fusion``."""
    stored = manifest = None
    if retriever is not None:
        retriever_class(retriever)  # an unknown name lists the known ones (before any advice that names it)
    if ranker != "none" and adapter != "none":
        manifest = load_ranker_manifest(workdir, dataset, ranker)
        trained_on, stored = manifest["config"]["retriever"], manifest.get("fusion")
        if retriever not in (None, trained_on):
            raise ConfigError(
                f"Ranker '{ranker}' ranks the candidates of '{trained_on}', not '{retriever}': drop --retriever, "
                f"or rank zero-shot with --adapter none, or train a ranker on them (rank-train --set "
                f"retriever={retriever})."
            )
        retriever = trained_on
    retriever = retriever or DEFAULT_RETRIEVER
    alpha, source = resolve_alpha(fusion, stored)
    if ranker == "none":
        if fusion not in (None, "auto", "none"):
            raise ConfigError(f"--fusion {fusion} needs a ranker: with --ranker none the retriever's order is final.")
        return retriever, None, "", None
    return retriever, alpha, source, manifest


def check_candidates_unchanged(manifest: dict, candidates_manifest: dict, dataset: str, ranker: str, rerun: str):
    """A ranker is scored on the candidates it was trained beside: exported again (another k, a retrained
    retriever), its α and validation figures would no longer be the ones it learned from."""
    if candidates_manifest["file_sha256"] != manifest["candidates_sha256"]:
        raise ArtifactError(
            f"The candidates of '{manifest['config']['retriever']}' for {dataset} were exported again after ranker "
            f"'{ranker}' was trained on them, so its validation scores would not be the ones it learned from. "
            f"Rerun: {rerun}"
        )


def ranked_candidates(workdir: Path, dataset, retriever: str, ranker: str, trained: dict | None):
    """The retriever's candidates and their manifest, refused when stale (the retriever or dataset changed since)
    or, for a trained ranker, exported again since it trained beside them (``ranker_plan``'s manifest)."""
    candidates, manifest = load_candidates(workdir, dataset, retriever)
    if trained:
        rerun = rank_train_command(dataset.name, ranker, workdir, trained["config"])
        check_candidates_unchanged(trained, manifest, dataset.name, ranker, rerun)
    return candidates, manifest


def check_served_retriever(workdir: Path, dataset, retriever: str, weights: str, ranker: str, trained: dict) -> None:
    """serve and serve-shell retrieve live, without the candidates: the retriever's weights (``weights``: their
    sha256, as load_retriever checked it) must be the ones the trained ranker learned beside. Its manifest records
    that sha256; an older one's candidates manifest does, when it is still the one the ranker trained on (else
    nothing can tell, and nothing is refused)."""
    expected = trained.get("retriever_weights_sha256")
    if expected is None:
        try:
            candidates = json.loads(candidates_paths(workdir, dataset.name, retriever)[1].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(candidates, dict) or candidates.get("file_sha256") != trained["candidates_sha256"]:
            return
        expected = candidates.get("retriever_weights_sha256")
    if expected is not None and expected != weights:
        raise ArtifactError(
            f"Retriever '{retriever}' of {dataset.name} was retrained after ranker '{ranker}' learned beside it: "
            f"its α and what it learned belong to the old one. Export the new candidates and train the ranker "
            f"again: {settings.command_for(f'llamarec candidates {dataset.name} --retriever {retriever}', workdir)}"
            f", then {rank_train_command(dataset.name, ranker, workdir, trained['config'])}"
        )


def fused_name(alpha: float) -> str:
    return f"fused (α={alpha:g})"


@dataclass
class Ranker:
    model: Any  # the LLM, in eval mode, with the adapter applied (merged unless the model is quantised)
    encoder: Any  # PromptEncoder
    description: str
    dtype: str  # the compute dtype chosen (bf16, fp16, fp32)
    dtype_reason: str  # why, in one line


def check_given(**options: str | None) -> None:
    """An empty --model or --adapter is refused: '' would read as the default (Llama 2 7B, the trained adapter)."""
    for name, value in options.items():
        if value is not None and not value.strip():
            raise ConfigError(f"--{name} is empty: leave it out for its default, or name one.")


def check_unused_without_ranker(**options) -> None:
    """With --ranker none nothing is ranked: options for the ranker are refused rather than silently ignored."""
    given = [f"--{name.replace('_', '-')}" for name, value in options.items() if value is not None]
    if given:
        raise ConfigError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for the ranker, and --ranker none ranks "
            f"nothing (the retriever's order alone): drop {'it' if len(given) == 1 else 'them'}, or name a ranker."
        )


def load_ranker(
    dataset,
    workdir: Path,
    *,
    ranker: str = "default",
    adapter: str | None = None,
    model: str | None = None,
    template: str | None = None,
    device: str = "auto",
    quantization: str | None = None,
    dtype: str | None = None,
    templates_dir: Path | None = None,
    trust_remote_code: bool = False,
) -> Ranker:
    """A trained ranker, or a zero-shot one with ``adapter="none"``. ``dtype``: as the ranker was trained (its
    --dtype, usually auto, decided again for this machine) unless given."""
    from ..ranking.models import DEFAULT_MODEL, load_model
    from ..ranking.prompts import PromptEncoder
    from ..ranking.templates import DEFAULT_TEMPLATE, load_template

    check_given(model=model, adapter=adapter)
    manifest = None
    if adapter != "none":
        manifest = load_ranker_manifest(workdir, dataset, ranker)
        if adapter:
            check_adapter_folder(Path(adapter))
        else:  # a corrupted or swapped adapter is refused before the model loads
            verify_files(
                ranker_dir(workdir, dataset.name, ranker),
                manifest,
                rank_train_command(dataset.name, ranker, workdir, manifest["config"]),
            )
        if model and model != manifest["config"]["model"]:
            raise ArtifactError(
                f"Ranker '{ranker}' is an adapter of {manifest['config']['model']}, not {model}. "
                f"Drop --model, or rank zero-shot with --adapter none."
            )
    config = manifest["config"] if manifest else {}

    def load(quantization: str):
        return load_model(
            model or config.get("model", DEFAULT_MODEL),
            quantization=quantization,
            device=device,
            dtype=dtype or config.get("dtype", "auto"),
            trust_remote_code=trust_remote_code,
        )

    prompt = load_template(template or config.get("template", DEFAULT_TEMPLATE), templates_dir)
    if manifest:
        check_template_unchanged(prompt, manifest, ranker, given=template is not None)
    loaded = load(quantization or config.get("quantization", "auto"))
    encoder = PromptEncoder(loaded.tokenizer, prompt, dataset.titles)
    llm = loaded.model
    if manifest:
        if list(encoder.verbalizer.token_ids) != manifest["letter_token_ids"]:
            raise ArtifactError(
                f"Ranker '{ranker}' was trained on other letter token ids than this tokenizer and template give. "
                f"Rerun: {rank_train_command(dataset.name, ranker, workdir, config)}"
            )
        from peft import PeftModel
        from safetensors import SafetensorError

        folder = Path(adapter) if adapter else ranker_dir(workdir, dataset.name, ranker) / "adapter"
        try:
            llm = PeftModel.from_pretrained(llm, folder)
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
            raise ArtifactError(
                f"The adapter in {folder} cannot be loaded ({str(exc).splitlines()[0] if str(exc) else exc!r}). "
                f"Rerun: {rank_train_command(dataset.name, ranker, workdir, config)}"
            ) from exc
        if loaded.quantization == "none":
            # Exact in fp32. In bf16, W + BA is rounded once, an error of the order of the base weights' own
            # rounding: over 40 ml-100k prompts the merged and the wrapped ranker were equally close to fp32
            # (mean |letter logit error| 0.100 and 0.103, same top letter for all 40). The merged weights go into a
            # freshly loaded model: the model PEFT wrapped and unwrapped ran a 600-token pass in 0.37 s on a CPU,
            # a fresh one holding the same weights in 0.27 s (cause not found; weights, layout, buffers, config
            # and hooks are identical).
            merged = llm.merge_and_unload().state_dict()
            del llm, loaded
            loaded = load("none")
            loaded.model.load_state_dict(merged)
            llm = loaded.model
        description = f"{ranker} ({manifest['config']['model']} + LoRA)"
    else:
        description = f"zero-shot {model or config.get('model', DEFAULT_MODEL)}"
    return Ranker(llm.eval(), encoder, description, loaded.dtype, loaded.dtype_reason)


def check_template_unchanged(prompt, manifest: dict, ranker: str, given: bool = False) -> None:
    """The template a trained ranker reads must be the file it was trained with: another --template, or one of the
    same name found first in --templates-dir (or edited since), would change every prompt without a word."""
    trained = manifest.get("template") or {}
    if trained.get("sha256") in (None, sha256_of(prompt.path)):
        return
    if given:
        raise ConfigError(
            f"Ranker '{ranker}' was trained with the template '{trained.get('name')}'; --template {prompt.path} is "
            "another prompt, one it never learned. --template is for zero-shot ranking (--adapter none)."
        )
    raise ArtifactError(
        f"Ranker '{ranker}' was trained with another '{trained.get('name')}' template than {prompt.path} "
        "(its SHA-256 differs). Point --templates-dir (or LLAMAREC_TEMPLATES_DIR) at the one it was trained "
        "with, or retrain it with this one."
    )


def check_adapter_folder(folder: Path) -> None:
    """An ``--adapter`` folder must be one PEFT wrote: its config and its weights."""
    missing = [name for name in ("adapter_config.json", "adapter_model.safetensors") if not (folder / name).is_file()]
    if missing:
        raise ArtifactError(
            f"--adapter {folder} is not a PEFT adapter folder (no {' or '.join(missing)} in it). Give the folder that "
            "rank-train wrote (<workdir>/<dataset>/ranker/<name>/adapter), or --adapter none to rank zero-shot."
        )


def evaluate(
    dataset_name: str | Dataset,
    *,
    workdir: Path,
    ranker: str = "default",
    retriever: str | None = None,
    adapter: str | None = None,
    model: str | None = None,
    template: str | None = None,
    device: str = "auto",
    quantization: str | None = None,
    dtype: str | None = None,
    batch_size: int = 8,
    max_examples: int | None = None,
    fusion: str = "auto",
    templates_dir: Path | None = None,
    trust_remote_code: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Rank the test subset (unless ``ranker == "none"``) and write the report; returns it.

    ``max_examples``: rank a seeded sample of the subset (a quick estimate, marked as such in the report).
    ``fusion``: auto (the α stored with the ranker), none, or an α in [0, 1]; the fused order is reported beside the
    pure ranker's."""
    check_given(model=model, adapter=adapter)
    if ranker == "none":
        check_unused_without_ranker(
            adapter=adapter,
            model=model,
            template=template,  # (not --templates-dir: LLAMAREC_TEMPLATES_DIR may give it for every command)
            quantization=quantization,
            dtype=dtype,
        )
    for option, value in (("--batch-size", batch_size), ("--max-examples", max_examples)):
        if value is not None and value < 1:
            raise ConfigError(f"{option} must be at least 1 (got {value}).")
    if ranker != "none":
        resolve_device(device)  # a bad --device is refused before anything loads
    dataset = load_dataset(workdir, dataset_name)  # a name, or the Dataset the pipeline loaded
    dataset_name = dataset.name
    ensure_writable(Workdir(workdir).reports(dataset_name))  # before minutes of ranking, not after
    retriever, alpha, alpha_source, trained = ranker_plan(workdir, dataset, ranker, adapter, retriever, fusion)
    candidates, candidates_manifest = ranked_candidates(workdir, dataset, retriever, ranker, trained)
    subset = valid_subset(dataset, candidates, "test")
    examples = sample(subset.examples, max_examples, seed=0)
    retriever_ranks = [e.target_index + 1.0 for e in examples]
    subset_retriever = _pick(subset_metrics(retriever_ranks))
    # All test users: the retriever's full ranking, exact; beside a ranker that ranked a sample, the same estimate
    # as the ranker's (the sample's subset metrics x hit-rate), so that the two rows are compared on the same users.
    sampled = ranker != "none" and len(examples) < len(subset.examples)
    overall_retriever = (
        {key: value * subset.hit_rate for key, value in subset_retriever.items()}
        if sampled
        else _pick(candidates_manifest["splits"]["test"])
    )
    report = {
        "dataset": dataset_name,
        "retriever": retriever,
        "k": candidates_manifest["k"],
        "test_users": subset.users,
        "subset_users": len(subset.examples),
        "hit_rate": subset.hit_rate,
        "ranked_users": len(examples),
        "true_is_first_candidate": sum(e.target_index == 0 for e in examples) / len(examples) if examples else 0.0,
        "subset": {"retriever": subset_retriever},
        "overall": {"retriever": overall_retriever},
    }
    name = "retriever"
    if ranker != "none":
        loaded = load_ranker(
            dataset,
            workdir,
            ranker=ranker,
            adapter=adapter,
            model=model,
            template=template,
            device=device,
            quantization=quantization,
            dtype=dtype,
            templates_dir=templates_dir,
            trust_remote_code=trust_remote_code,
        )
        log(loaded.dtype_reason)
        name = "zero-shot" if adapter == "none" else ranker
        _add_ranker(report, name, loaded, examples, batch_size, subset.hit_rate, alpha, alpha_source)
    report["report_files"] = _write_report(Workdir(workdir).reports(dataset_name), name, report)
    return report


def _add_ranker(report: dict, name: str, loaded: Ranker, examples, batch_size: int, hit_rate, alpha, alpha_source):
    """Rank ``examples`` with ``loaded`` and add its figures to ``report``, beside the retriever's (and the fused
    order's, when ``alpha`` is set)."""
    retriever_ranks = [e.target_index + 1.0 for e in examples]
    began = time.perf_counter()
    scores = score_subset(loaded.model, loaded.encoder, examples, batch_size)
    seconds = time.perf_counter() - began
    ranks = target_ranks(examples, scores)
    report["ranker"] = {
        "name": name,
        "description": loaded.description,
        "dtype": loaded.dtype,
        "dtype_reason": loaded.dtype_reason,
        "seconds": round(seconds, 1),
        "top_is_first_candidate": _first_share(scores),  # position bias: the share of users it ranks A first
    }
    report["ranks"] = {"users": [e.user for e in examples], "retriever": retriever_ranks, "ranker": ranks}
    _add_order(report, "ranker", ranks, retriever_ranks, hit_rate)
    report["paired"] = report["paired_by_order"]["ranker"]
    report["fusion"] = {"alpha": alpha, "source": alpha_source}
    if alpha is not None:
        fused = fused_ranks(examples, scores, alpha)
        report["ranks"]["fused"] = fused
        _add_order(report, fused_name(alpha), fused, retriever_ranks, hit_rate)


def _write_report(folder: Path, name: str, report: dict) -> list[str]:
    """``evaluate-<name>.json`` and ``.md`` in ``folder``, each replaced atomically; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"evaluate-{name}.json", report)
    markdown = folder / f"evaluate-{name}.md"
    tmp = markdown.with_name(f".{markdown.name}.tmp")
    tmp.write_text(to_markdown(report), encoding="utf-8")
    tmp.replace(markdown)
    return [str(folder / f"evaluate-{name}.json"), str(markdown)]


def paired_lines(report: dict) -> list[str]:
    """One sentence per order: its gain over the retriever's order, paired, and (for the fused one) its α."""
    lines = []
    for who, paired in report.get("paired_by_order", {}).items():
        lines.append(paired_summary(paired, who="Ranker" if who == "ranker" else who.capitalize()))
    fusion = report.get("fusion") or {}
    if fusion.get("alpha") is not None:
        alpha, source = fusion["alpha"], fusion["source"]
        lines.append(f"Fusion: α = {alpha:g} ({source}); α = 1 is the ranker alone, 0 the retriever's order.")
    elif "ranker" in report:
        lines.append(f"Fusion: off ({fusion.get('source', 'none')}).")
    return lines


def _add_order(report: dict, who: str, ranks: list[float], retriever_ranks: list[float], hit_rate: float) -> None:
    view = _pick(subset_metrics(ranks))
    report["subset"][who] = view
    report["overall"][who] = {key: value * hit_rate for key, value in view.items()}
    report.setdefault("paired_by_order", {})[who] = paired_difference(ranks, retriever_ranks)


def _first_share(scores) -> float:
    return sum(order(s)[0] == 0 for s in scores) / len(scores) if scores else 0.0


def to_markdown(report: dict) -> str:
    columns = [f"{name}@{k}" for k in REPORT_KS for name in NAMES]
    lines = [
        f"# Evaluation on {report['dataset']} (test)",
        "",
        f"Candidates: top-{report['k']} of `{report['retriever']}`. Valid retrieval subset: "
        f"{report['subset_users']:,} of {report['test_users']:,} test users (hit-rate {report['hit_rate']:.4f}).",
    ]
    if report["ranked_users"] < report["subset_users"]:
        lines.append(f"Estimate: a seeded sample of {report['ranked_users']:,} subset users was ranked.")
    if "ranker" in report:
        r = report["ranker"]
        dtype = f" in {r['dtype']}" if "dtype" in r else ""
        lines.append(f"Ranker: {r['description']}{dtype}, {r['seconds']} s for the subset.")
    lines += paired_lines(report)
    for view, title in (("subset", "Valid retrieval subset"), ("overall", "All test users")):
        lines += ["", f"## {title}", "", "| order | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for who, metrics in report[view].items():
            lines.append(f"| {who} | " + " | ".join(f"{metrics[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"
