"""``llamarec evaluate`` as a library call: rank the test subset and report the paper's two views (METHOD.md §5).

- Valid retrieval subset (paper Table 3): test users whose true item is among the retriever's candidates; the
  ranker's order next to the retriever's own order of the same candidates.
- Overall (paper Table 1): all test users. For k up to the number of candidates, users outside the subset
  contribute 0, so overall = subset metric x hit-rate; the retriever's overall figures are its full ranking.

The report goes to ``<workdir>/<dataset>/reports/evaluate-<ranker>.{json,md}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.artifact import load_dataset
from ..errors import ArtifactError
from ..evaluation.metrics import paired_difference
from ..retrieval.candidates import load_candidates
from ..retrieval.checkpoint import write_json
from .examples import valid_subset
from .train import load_ranker_manifest, rank_subset, ranker_dir, sample, subset_metrics

KS = (5, 10)
NAMES = ("MRR", "NDCG", "Recall")


def _pick(metrics: dict, ks=KS) -> dict[str, float]:
    return {f"{name}@{k}": metrics.get(f"{name}@{k}", 0.0) for k in ks for name in NAMES}


def paired_summary(d: dict) -> str:
    interval = f" ± {d['half_width']:.4f} (95%," if d["half_width"] is not None else " ("
    return (
        f"Ranker minus retriever order, {d['metric']} on the subset: {d['difference']:+.4f}{interval} paired over "
        f"{d['users']:,} users); the true item ranked higher for {d['better']:,} users, lower for {d['worse']:,}."
    )


@dataclass
class Ranker:
    model: Any  # the LLM, in eval mode, with the adapter applied (merged unless the model is quantised)
    encoder: Any  # PromptEncoder
    description: str
    dtype: str  # the compute dtype chosen (bf16, fp16, fp32)
    dtype_reason: str  # why, in one line


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
    from .models import DEFAULT_MODEL, load_model
    from .prompts import PromptEncoder
    from .templates import DEFAULT_TEMPLATE, load_template

    manifest = None
    if adapter != "none":
        manifest = load_ranker_manifest(workdir, dataset, ranker)
        if model and model != manifest["config"]["model"]:
            raise ArtifactError(
                f"Ranker '{ranker}' is an adapter of {manifest['config']['model']}, not {model}. "
                f"Drop --model, or rank zero-shot with --adapter none."
            )
    config = manifest["config"] if manifest else {}
    loaded = load_model(
        model or config.get("model", DEFAULT_MODEL),
        quantization=quantization or config.get("quantization", "auto"),
        device=device,
        dtype=dtype or config.get("dtype", "auto"),
        trust_remote_code=trust_remote_code,
    )
    prompt = load_template(template or config.get("template", DEFAULT_TEMPLATE), templates_dir)
    encoder = PromptEncoder(loaded.tokenizer, prompt, dataset.titles)
    llm = loaded.model
    if manifest:
        if list(encoder.verbalizer.token_ids) != manifest["letter_token_ids"]:
            raise ArtifactError(
                f"Ranker '{ranker}' was trained on other letter token ids than this tokenizer and template give. "
                f"Rerun: llamarec rank-train {dataset.name}"
            )
        from peft import PeftModel

        folder = Path(adapter) if adapter else ranker_dir(workdir, dataset.name, ranker) / "adapter"
        llm = PeftModel.from_pretrained(llm, folder)
        if loaded.quantization == "none":
            # Exact in fp32. In bf16, W + BA is rounded once, an error of the order of the base weights' own
            # rounding: over 40 ml-100k prompts the merged and the wrapped ranker were equally close to fp32
            # (mean |letter logit error| 0.100 and 0.103, same top letter for all 40). The merged weights go into a
            # freshly loaded model: the model PEFT wrapped and unwrapped ran a 600-token pass in 0.37 s on a CPU,
            # a fresh one holding the same weights in 0.27 s (cause not found; weights, layout, buffers, config
            # and hooks are identical).
            merged = llm.merge_and_unload().state_dict()
            del llm, loaded
            loaded = load_model(
                model or config.get("model", DEFAULT_MODEL),
                quantization="none",
                device=device,
                dtype=dtype or config.get("dtype", "auto"),
                trust_remote_code=trust_remote_code,
            )
            loaded.model.load_state_dict(merged)
            llm = loaded.model
        description = f"{ranker} ({manifest['config']['model']} + LoRA)"
    else:
        description = f"zero-shot {model or config.get('model', DEFAULT_MODEL)}"
    return Ranker(llm.eval(), encoder, description, loaded.dtype, loaded.dtype_reason)


def evaluate(
    dataset_name: str,
    *,
    workdir: Path,
    ranker: str = "default",
    retriever: str = "lrurec",
    adapter: str | None = None,
    model: str | None = None,
    template: str | None = None,
    device: str = "auto",
    quantization: str | None = None,
    dtype: str | None = None,
    batch_size: int = 8,
    max_examples: int | None = None,
    templates_dir: Path | None = None,
    trust_remote_code: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Rank the test subset (unless ``ranker == "none"``) and write the report; returns it.

    ``max_examples``: rank a seeded sample of the subset (a quick estimate, marked as such in the report)."""
    dataset = load_dataset(workdir, dataset_name)
    if ranker != "none" and adapter != "none":
        retriever = load_ranker_manifest(workdir, dataset, ranker)["config"]["retriever"]
    candidates, candidates_manifest = load_candidates(workdir, dataset, retriever)
    subset = valid_subset(dataset, candidates, "test")
    examples = sample(subset.examples, max_examples, seed=0)
    test_summary = candidates_manifest["splits"]["test"]
    retriever_ranks = [e.target_index + 1.0 for e in examples]
    report = {
        "dataset": dataset_name,
        "retriever": retriever,
        "k": candidates_manifest["k"],
        "test_users": subset.users,
        "subset_users": len(subset.examples),
        "hit_rate": subset.hit_rate,
        "ranked_users": len(examples),
        "subset": {"retriever": _pick(subset_metrics(retriever_ranks))},
        "overall": {"retriever": _pick(test_summary)},
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
        began = time.perf_counter()
        ranks = rank_subset(loaded.model, loaded.encoder, examples, batch_size)
        seconds = time.perf_counter() - began
        subset_view = _pick(subset_metrics(ranks))
        name = "zero-shot" if adapter == "none" else ranker
        report["ranker"] = {
            "name": name,
            "description": loaded.description,
            "dtype": loaded.dtype,
            "dtype_reason": loaded.dtype_reason,
            "seconds": round(seconds, 1),
        }
        report["subset"]["ranker"] = subset_view
        report["overall"]["ranker"] = {key: value * subset.hit_rate for key, value in subset_view.items()}
        report["paired"] = paired_difference(ranks, retriever_ranks)
        report["ranks"] = {"users": [e.user for e in examples], "retriever": retriever_ranks, "ranker": ranks}
    folder = workdir / dataset_name / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"evaluate-{name}.json", report)
    markdown = folder / f"evaluate-{name}.md"
    tmp = markdown.with_name(f".{markdown.name}.tmp")
    tmp.write_text(to_markdown(report), encoding="utf-8")
    tmp.replace(markdown)
    report["report_files"] = [str(folder / f"evaluate-{name}.json"), str(markdown)]
    return report


def to_markdown(report: dict) -> str:
    columns = [f"{name}@{k}" for k in KS for name in NAMES]
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
    if "paired" in report:
        lines.append(paired_summary(report["paired"]))
    for view, title in (("subset", "Valid retrieval subset"), ("overall", "All test users")):
        lines += ["", f"## {title}", "", "| order | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for who, metrics in report[view].items():
            lines.append(f"| {who} | " + " | ".join(f"{metrics[c]:.4f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"
