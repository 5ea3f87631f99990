"""The benchmarks import llamarec lazily, inside functions, so a renamed library function breaks them only hours
into a run. Every name they import from llamarec_cli must exist."""

import ast
import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


def llamarec_imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llamarec_cli")
        for alias in node.names
    ]


def benchmark(name: str):
    """A script of benchmarks/ as a module (the folder is not a package)."""
    folder = str(BENCHMARKS[0].parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_imports_exist(path):
    imports = llamarec_imports(path)
    missing = [f"{module}.{name}" for module, name in imports if not hasattr(importlib.import_module(module), name)]
    assert not missing, f"{path.name} imports names llamarec_cli no longer has: {missing}"


def test_the_gpu_comparison_runs_on_a_tiny_shape(llama2_tokenizer_dir):
    """The Llama-2-7B-shaped GPU run is only reachable with a GPU; the same code on a tiny shape on the CPU."""
    import torch
    from transformers import AutoTokenizer

    from llamarec_cli.ranking.prompts import Example

    efficiency = benchmark("efficiency")

    tokenizer = AutoTokenizer.from_pretrained(llama2_tokenizer_dir)
    titles = {i: f"Movie number {i} ({1950 + i})" for i in range(1, 41)}
    examples = [Example(list(range(1, 11)), list(range(11, 31)), 0)]
    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    gpu = efficiency.shaped_model_run(titles, examples, [5], tokenizer, shape=tiny, device="cpu", dtype=torch.float32)
    (row,) = gpu["rows"]
    assert row["title_tokens"] == 5 and row["generated_tokens"] >= 20 * 5 and row["prompt_tokens"] > 30 * 5
    assert 0 < row["floor_s"] and row["speedup"] == row["generation_s"] / row["verbalizer_s"]
    assert row["over_floor"] == row["verbalizer_s"] / row["floor_s"]
    data = {
        "command": "python benchmarks/efficiency.py",
        "date": "today",
        "machine": "test",
        "threads": 1,
        "cpu_parameters": gpu["parameters"],
        "dtype": "fp32",
        "cpu": gpu["rows"],
        "throughput": {
            "1": {"requests": 1, "seconds": 1.0, "requests_per_second": 1.0},
            "8, one pass": {"requests": 1, "seconds": 2.0, "requests_per_second": 0.5},
        },
        "serve": {"ranker": "zero-shot", "requests": 1, "p50_s": 1.0, "p95_s": 1.0},
        "gpu": gpu,
    }
    text = efficiency.markdown(data)
    assert "Llama-2-7B shape (random weights, fp16) on cpu" in text and f"| 5 | {row['prompt_tokens']} |" in text
    assert "- batch 8 (one forward pass per batch, as before): 0.50 requests/s" in text


def test_the_floor_counts_the_forward_pass_multiplies():
    """forward_flops against torch's own FLOP counter on a tiny Llama with grouped-query attention: they differ by
    exactly the upper triangle of the attention, which a causal kernel need not compute."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import LlamaConfig, LlamaForCausalLM

    efficiency = benchmark("efficiency")
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        attn_implementation="eager",  # plain matmuls, which the counter sees
    )
    model = LlamaForCausalLM(config).eval()
    tokens = 50
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, 1000, (1, tokens)), logits_to_keep=1)
    upper_triangle = 2 * config.num_hidden_layers * config.hidden_size * tokens * tokens
    assert counter.get_total_flops() == efficiency.forward_flops(config, tokens) + upper_triangle


def test_the_retrieval_interval_by_hand():
    retrieval = benchmark("retrieval")
    run = {"dataset": "ml-100k", "retriever": "lrurec", "test": {"Recall@10": 0.1}, "test_users": 100}
    line = retrieval.noise(run, {"Recall@10": 0.2})  # 1.96 * sqrt(0.1 * 0.9 / 100) = 0.0588
    assert "0.1000 ± 0.0588" in line and "0.2000 is outside it" in line
    assert "inside it" in retrieval.noise(run, {"Recall@10": 0.15})


def test_a_retrieval_run_stopped_by_the_epoch_cap_says_so():
    retrieval = benchmark("retrieval")
    run = {
        "dataset": "ml-100k", "retriever": "bert4rec", "test": dict.fromkeys(retrieval.COLUMNS, 0.1),
        "test_users": 610, "epochs": 500.0, "steps": 26500, "best_step": 26000, "train_seconds": 600.0,
        "steps_per_second": 3.0, "peak_rss_mib": 1000.0, "command": "python benchmarks/retrieval.py",
        "date": "2026-11-22", "machine": "x86_64, 2 cores", "threads": 1, "config": {"max_epochs": 500},
        "stopped_early": False,
    }  # fmt: skip
    assert "stopped by the cap of 500 epochs" in "\n".join(retrieval.table("ml-100k", "ml-100k", {"b": run}))
    run["stopped_early"] = True
    assert "cap of" not in "\n".join(retrieval.table("ml-100k", "ml-100k", {"b": run}))


def test_paired_retrieval_runs_by_hand():
    retrieval = benchmark("retrieval")
    from llamarec_cli.evaluation.metrics import paired_difference

    ours, base = [1, 3, 12, 40], [2, 11, 12, 5]  # Recall@10 per user: 1,1,0,0 against 1,0,0,1
    recall = paired_difference(ours, base, k=10, metric="Recall")
    assert (
        recall["metric"] == "Recall@10"
        and recall["difference"] == 0.0
        and (recall["better"], recall["worse"]) == (2, 1)
    )
    run = {"dataset": "games", "against": "/base", "command": "c", "date": "d", "Recall": recall}
    run["NDCG"] = paired_difference(ours, base, k=10)
    assert "| g | `/base` | +0.0000 ± " in "\n".join(retrieval.paired_table("games", {"g": run}))


def test_retrieval_results_from_processes_side_by_side_are_all_kept(tmp_path, monkeypatch):
    """Benchmarks run one per core and each merges its result when it ends: none may overwrite another's."""
    import multiprocessing

    retrieval = benchmark("retrieval")
    monkeypatch.setattr(retrieval, "RESULTS", tmp_path)
    monkeypatch.setattr(retrieval, "markdown", lambda data: "")  # the table is tested above
    fork = multiprocessing.get_context("fork")
    workers = [
        fork.Process(target=retrieval.merge, args=({"dataset": "games", "retriever": f"r{i}"}, "runs", "c"))
        for i in range(8)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    runs = json.loads((tmp_path / "retrieval.json").read_text())["runs"]
    assert sorted(runs) == [f"games/r{i}" for i in range(8)]
    assert not list(tmp_path.glob(".*.tmp-*"))  # no half-written file left behind


def test_the_retrieval_headline_picks_runs_by_todays_default_config():
    retrieval = benchmark("retrieval")
    test = {"Recall@10": 0.15, "NDCG@10": 0.08}
    runs = {
        "games/lrurec [dropout=0.2]": {"dataset": "games", "retriever": "lrurec", "config": {"dropout": 0.2}},
        "games/lrurec": {"dataset": "games", "retriever": "lrurec", "config": {"dropout": 0.5}},
    }
    for run in runs.values():
        run |= {"test": test, "test_users": 10_000}
    lines = retrieval.defaults_table(runs, default_config=lambda dataset, retriever: {"dropout": 0.5})
    rows = [line for line in lines if line.startswith("| games")]
    # 1.96 * sqrt(0.15 * 0.85 / 10000) = 0.0070; the paper's games figures are 0.1463 / 0.0800
    assert rows == [
        "| games | lrurec | 0.1500 ± 0.0070 | 0.1463 | +0.0037 | 0.0800 | 0.0800 | +0.0000 | `games/lrurec` |"
    ]
    assert retrieval.defaults_table(runs, default_config=lambda dataset, retriever: {"dropout": 0.1}) == []


def test_the_settings_tried_are_listed_best_validation_first_with_only_the_keys_that_differ():
    retrieval = benchmark("retrieval")

    def run(dropout, weight_decay, val):
        config = {"dropout": dropout, "weight_decay": weight_decay, "lr": 0.001}
        return {
            "dataset": "games", "retriever": "lrurec", "config": config, "val": {"Recall@10": val},
            "test": {"Recall@10": val - 0.01, "NDCG@10": 0.07}, "best_step": 7000, "date": "2026-12-02",
        }  # fmt: skip

    runs = {"a": run(0.2, 0.01, 0.148), "b": run(0.5, 0.01, 0.158), "c": run(0.5, 0.0, 0.150)}
    runs["other"] = run(0.2, 0.01, 0.2) | {"dataset": "beauty"}
    lines = retrieval.settings_table("games", runs, default_config=lambda d, r: runs["b"]["config"])
    assert (
        lines[2]
        == "| dropout | weight decay | validation Recall@10 | test Recall@10 | test NDCG@10 | best step | date | run |"
    )
    assert lines[4:7] == [
        "| 0.5 | 0.01 | 0.1580 | 0.1480 | 0.0700 | 7,000 | 2026-12-02 | `b` (today's default) |",
        "| 0.5 | 0.0 | 0.1500 | 0.1400 | 0.0700 | 7,000 | 2026-12-02 | `c` |",
        "| 0.2 | 0.01 | 0.1480 | 0.1380 | 0.0700 | 7,000 | 2026-12-02 | `a` |",
    ]
    assert retrieval.settings_table("beauty", runs) == []  # one run: nothing was compared
