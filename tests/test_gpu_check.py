"""benchmarks/gpu_check.py runs only where a GPU is lent, rarely; its dry run takes every stage through the same code
on the CPU on tiny shapes, so the script is known to work before a GPU's minutes are spent on it."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, shared_path


def test_gpu_check_dry_run_takes_every_stage(tmp_path):
    shared_path("datasets", "ml-latest-small", "ratings.csv")
    shared_path("tokenizers", "llama-2", "tokenizer.model")
    out = tmp_path / "out"
    env = os.environ | {"OUT": str(out), "LLAMAREC_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--workdir", str(tmp_path / "w")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu-check.json").read_text())
    stages = result["stages"]
    assert result["dry_run"] and list(stages) == ["machine", "retriever", "qlora", "shaped", "data"]
    assert not [name for name, stage in stages.items() if "error" in stage]

    retriever = stages["retriever"]
    assert retriever["losses_match"] and len(retriever["first_losses"]["cpu"]) == 5
    assert retriever["steps"] > 0 and 0 < retriever["hit_rate_at_20"]["test"] <= 1

    qlora = stages["qlora"]
    assert qlora["quantization"] == "4bit" and qlora["dtype"] == "bf16" and qlora["adapter_loads_with_peft"]
    assert qlora["steps"] == 2 and len(qlora["losses"]) == 2
    for precision in ("bf16", "4bit"):
        agree = qlora["agreement_with_fp32"][precision]
        assert agree["requests"] == 4 and -1 <= agree["spearman_min"] <= agree["spearman_mean"] <= 1
    batching = qlora["batching"]
    assert (
        batching["requests"] == 4 and batching["speedup"] == batching["per_second"]["16"] / batching["per_second"]["1"]
    )

    shaped = stages["shaped"]
    for precision in ("bf16", "4bit"):
        row = shaped[precision]
        assert row["speedup"] == row["generation_s"] / row["verbalizer_s"] and row["floor_s"] > 0
    assert stages["data"]["train_examples"] >= 2 and "retriever" in stages["data"]["subset"]

    report = (out / "gpu-check.md").read_text()
    assert "Dry run on the CPU" in report and "| 4bit |" in report and "PeftModel.from_pretrained: True" in report
    assert "micro-batching" in report
    assert not (tmp_path / "w" / "ml-100k" / "ranker" / ".qlora.partial").exists()  # finished, nothing half-done


def test_gpu_check_refuses_a_machine_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "--dry-run" in done.stderr and "Traceback" not in done.stderr
