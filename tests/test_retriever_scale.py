"""The retriever past small catalogues and one process: the catalogue losses, ranking a slice of the items at a
time, and retrieve-train / candidates under ``accelerate launch``."""

from __future__ import annotations

import math
import subprocess

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import accelerate_launch
from safetensors.torch import load_file

from llamarec_cli.errors import ArtifactError, ConfigError
from llamarec_cli.evaluation.metrics import MetricSums, mask_history, ranks
from llamarec_cli.retrieval import bf16_search, losses
from llamarec_cli.retrieval import evaluate as ranking
from llamarec_cli.retrieval.checkpoint import retriever_dir
from llamarec_cli.retrieval.data import EvalSet, pad_left
from llamarec_cli.retrieval.lru import LRURec, LRURecConfig
from llamarec_cli.stages.candidates import candidates_paths, export_candidates
from llamarec_cli.stages.retrieve_train import train_retriever

FAST = {"hidden": 16, "val_every": 10, "patience": 3, "max_epochs": 12}


def batch(rows=37, items=101, dim=8, seed=0):
    torch.manual_seed(seed)
    queries = torch.randn(rows, dim, requires_grad=True)
    table = torch.randn(items, dim, requires_grad=True)
    bias = torch.randn(items, requires_grad=True)
    return queries, torch.randint(1, items, (rows,)), table, bias


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("loss", ["full", "chunked"])
def test_full_and_chunked_softmax_are_cross_entropy_over_all_items(loss, with_bias, monkeypatch):
    """Both are custom autograd functions (blocks of rows, slices of items): their loss and gradients against
    torch's cross-entropy over the whole logits matrix, with several blocks and a short last one."""
    monkeypatch.setattr(losses, "MIN_BLOCK_ROWS", 1)
    monkeypatch.setattr(losses, "BLOCK_FLOATS", 7 * 101)  # 37 rows of 101 items: blocks of 7 rows, the last of 2
    queries, labels, table, bias = batch()
    bias = bias if with_bias else None
    inputs = (queries, table) + ((bias,) if with_bias else ())
    expected = F.cross_entropy(queries @ table.T + (0 if bias is None else bias), labels)
    if loss == "full":
        got = losses.full_softmax(queries, labels, table, bias)
    else:
        got = losses.chunked_softmax(queries, labels, table, bias, chunk=13)  # 101 items: 8 slices, one short
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    for want, have in zip(torch.autograd.grad(expected, inputs), torch.autograd.grad(got * 3, inputs)):
        assert torch.allclose(3 * want, have, atol=1e-6)  # the incoming gradient (3) scales the stored ones


def test_blocked_full_softmax_passes_gradcheck_and_needs_no_gradient_to_run(monkeypatch):
    monkeypatch.setattr(losses, "MIN_BLOCK_ROWS", 1)
    monkeypatch.setattr(losses, "BLOCK_FLOATS", 3 * 11)
    torch.manual_seed(0)
    queries = torch.randn(8, 4, dtype=torch.double, requires_grad=True)
    table = torch.randn(11, 4, dtype=torch.double, requires_grad=True)
    bias = torch.randn(11, dtype=torch.double, requires_grad=True)
    labels = torch.randint(1, 11, (8,))
    assert torch.autograd.gradcheck(lambda q, t, b: losses.full_softmax(q, labels, t, b), (queries, table, bias))
    with torch.no_grad():  # validation losses: the plain path, same value
        plain = losses.full_softmax(queries, labels, table, bias)
    assert plain.item() == pytest.approx(losses.full_softmax(queries, labels, table, bias).item(), rel=1e-12)


def test_chunked_softmax_never_holds_the_full_logits(monkeypatch):
    queries, labels, table, bias = batch(rows=8, items=1000)
    widths = []
    real = losses.item_logits
    monkeypatch.setattr(losses, "item_logits", lambda q, t, b: widths.append(t.size(0)) or real(q, t, b))
    monkeypatch.setattr(losses, "LOGITS_BUDGET", 8 * 64)
    losses.chunked_softmax(queries, labels, table, bias).backward()
    assert max(widths) == 64 and sum(widths) == 2 * 1000  # every item once forward, once backward


def test_sampled_softmax_corrects_by_the_probability_of_being_sampled():
    counts = torch.tensor([0, 6, 3, 1, 0, 0])  # item 1 is 6x as common as item 3; items 4 and 5 never occur
    sampled = losses.SampledSoftmax(counts, negatives=4)
    ids = torch.tensor([1, 3, 5])
    p = torch.tensor([0.6, 0.1, 0.0], dtype=torch.float64)
    expected = torch.log(1 - (1 - p) ** 2 * (1 - 1 / 5) ** 4)  # 2 targets, 4 uniform draws over 5 items
    assert torch.allclose(sampled.log_inclusion(ids, targets=2).double(), expected, atol=1e-6)

    queries, labels, table, bias = batch(rows=16, items=6)
    torch.manual_seed(3)
    loss = sampled(queries, labels.clamp(max=3), table, bias)
    assert math.isfinite(loss.item())
    loss.backward()
    assert table.grad[0].abs().sum() == 0  # the padding id is never a sampled candidate


def test_each_loss_trains_lrurec_and_a_plugin_without_a_table_is_refused(chain, workdir):
    for loss in ("chunked", "sampled"):
        flags = {**FAST, "max_epochs": 4, "loss": loss, "uniform_negatives": 64}
        manifest = train_retriever("chain", workdir=workdir, device="cpu", flags=flags)
        assert manifest["config"]["loss"] == loss
        assert manifest["metrics"]["test"]["Recall@10"] > 0.3  # the chain's next item is learnable; chance is 1/150

    from llamarec_cli.retrieval.contract import Retriever, RetrieverConfig
    from llamarec_cli.retrieval.train import Objective

    class OwnLoss(Retriever):
        def loss(self, windows):
            return torch.zeros(())

    with pytest.raises(ConfigError, match="needs a retriever that implements train_queries, queries and item_table"):
        Objective(OwnLoss(RetrieverConfig(loss="sampled"), 10), [[1, 2]])
    with pytest.raises(ConfigError, match="Known losses: full, chunked, sampled"):
        RetrieverConfig(loss="bpr")


def small_bf16_blocks(monkeypatch):
    """bf16_search on a tiny catalogue, in small blocks (the first holds 24 segments: just over the depth)."""
    monkeypatch.setattr(bf16_search, "worth_it", lambda table: True)
    sizes = {"FINE": 4, "SEGMENT": 8, "CHUNK_ITEMS": 32, "FIRST_BLOCK_ITEMS": 192, "BLOCK_ITEMS": 64}
    for name, value in sizes.items():
        monkeypatch.setattr(bf16_search, name, value)


@pytest.mark.parametrize("search", ["fp32", "bf16"])
def test_ranking_a_slice_of_the_catalogue_at_a_time_gives_the_full_rankings(search, monkeypatch):
    if search == "bf16":
        small_bf16_blocks(monkeypatch)
    else:
        monkeypatch.setattr(bf16_search, "worth_it", lambda table: False)
    torch.manual_seed(0)
    model = LRURec(LRURecConfig(hidden=16), num_items=500).eval()
    with torch.no_grad():
        model.item_bias.normal_()
    generator = torch.Generator().manual_seed(1)
    histories = [torch.randint(1, 501, (int(n),), generator=generator).tolist() for n in torch.randint(1, 30, (90,))]
    targets = torch.randint(1, 501, (90,), generator=generator).tolist()
    targets[3] = histories[3][0]  # a target already seen ranks last, as in metrics.ranks
    data = EvalSet("test", list(range(90)), histories, targets)
    with torch.no_grad():
        scores = model.score(pad_left([h[-50:] for h in histories])).float()
    mask_history(scores, pad_left(histories))
    expected = MetricSums()
    expected.add(ranks(scores, torch.tensor(targets)))
    top = scores.topk(7, dim=1)

    monkeypatch.setattr(ranking, "CPU_BLOCK_FLOATS", 90 * 37)  # slices of 37 items: the target and top-k straddle them
    items, values, metrics = ranking.top_k(model, data, "cpu", 7)
    assert metrics == pytest.approx(expected.result())
    assert torch.equal(items, top.indices.to(torch.int32)) and torch.allclose(values, top.values, atol=1e-5)

    # An item scored NaN for everyone counts ahead of every target (metrics.ranks), in whichever slice it lies.
    with torch.no_grad():
        model.item_bias[321] = float("nan")
        scores = model.score(pad_left([h[-50:] for h in histories])).float()
    mask_history(scores, pad_left(histories))
    expected = MetricSums()
    expected.add(ranks(scores, torch.tensor(targets)))
    items, _, metrics = ranking.top_k(model, data, "cpu", 7)
    assert metrics == pytest.approx(expected.result())
    unseen = torch.tensor([321 not in h for h in histories])
    assert torch.equal(items[:, 0] == 321, unseen)  # NaN first in the top-k, as topk orders it

    with torch.no_grad():
        model.item_bias[0] = 100.0  # the padding id scores best, and no history here needs padding: still never ranked
    alone = EvalSet("test", [0, 1], [[5, 6, 7], [8, 9, 10]], [11, 12])
    items, _, _ = ranking.top_k(model, alone, "cpu", 20)
    assert items.shape == (2, 20) and not (items == 0).any()


def bf16_error_bound(queries, table, bias=None):
    """Each bf16 score of bf16_search's multiply, and the bound on its distance to the fp32 score it stands for."""
    prepared = bf16_search.prepare(table, bias)
    query = bf16_search._with_bias(queries, None if bias is None else 1.0)
    q16 = query.to(torch.bfloat16)
    scores = (q16 @ prepared.items[: prepared.num_items].T).float()
    norm, rounding = query.norm(dim=1, keepdim=True), (q16.float() - query).norm(dim=1, keepdim=True)
    error = (
        rounding * prepared.max_norm
        + norm * prepared.max_rounding
        + rounding * prepared.max_rounding
        + bf16_search.accumulation(query.size(1)) * (norm + rounding) * (prepared.max_norm + prepared.max_rounding)
    )
    return scores, error + bf16_search.ROUNDING * scores.abs()


@pytest.mark.parametrize("scale", [0.02, 1.0, 30.0])
def test_bf16_scores_stay_within_the_bound_the_search_relies_on(scale):
    """The bound holds for this machine's bf16 multiply (it assumes fp32 sums and a result rounded to nearest)."""
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(300, 64, generator=generator) * scale
    queries[:20] = queries[:20].abs()  # aligned with the table below: large scores, where the result's rounding counts
    table = torch.randn(4000, 64, generator=generator) * scale
    table[:200] = table[:200].abs()
    bias = torch.randn(4000, generator=generator)
    for with_bias in (None, bias):
        scores, bound = bf16_error_bound(queries, table, with_bias)
        exact = queries.double() @ table.double().T + (0 if with_bias is None else with_bias.double())
        assert ((scores.double() - exact).abs() <= bound.double()).all()


def test_bf16_search_returns_the_fp32_best_even_among_items_bf16_cannot_tell_apart(monkeypatch):
    """Top items a twentieth of a bf16 step apart: their order comes from fp32; users whose scores bf16 cannot
    search (all negative, or NaN) are left to the caller."""
    small_bf16_blocks(monkeypatch)
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(16, generator=generator)
    table = base + 3e-3 * torch.randn(700, 16, generator=generator)  # scores ~16 +- 0.05, a bf16 step there: 0.06
    queries = base + 0.1 * torch.randn(40, 16, generator=generator)
    queries[5] = -queries[5]  # every score negative: cannot be searched on the bits
    queries[6] = float("nan")
    seen = torch.randint(1, 700, (40, 6), generator=generator)
    seen[:, :2] = 0  # padding
    found = bf16_search.search(queries, table, None, bf16_search.prepare(table, None), seen, 21, {})
    scores = (queries.double() @ table.double().T).float()
    scores[:, 0] = -math.inf
    scores.scatter_(1, seen, -math.inf)
    top = scores.topk(21, dim=1)
    assert found.fallback.tolist() == [row in (5, 6) for row in range(40)]
    searched = ~found.fallback
    assert torch.equal(found.items[searched], top.indices[searched])
    assert torch.allclose(found.scores[searched], top.values[searched], rtol=1e-6, atol=0)


def test_bf16_search_leaves_every_user_to_the_fp32_scan_when_the_first_block_cannot_set_a_threshold(monkeypatch):
    small_bf16_blocks(monkeypatch)  # 24 segments in the first block
    table, queries = torch.rand(300, 8), torch.rand(5, 8)
    found = bf16_search.search(queries, table, None, bf16_search.prepare(table, None), torch.zeros(5, 1).long(), 30, {})
    assert found.fallback.all()


class Scaled(LRURec):
    def __init__(self, config, num_items):
        super().__init__(config, num_items)
        self.scale = torch.tensor(2.0)  # neither parameter nor buffer: left on the meta device if built there


class Counted(LRURec):
    def __init__(self, config, num_items):
        super().__init__(config, num_items)
        self.start = int(next(self.parameters()).abs().sum().item() >= 0)  # .item() fails on the meta device


@pytest.mark.parametrize("cls", [LRURec, Scaled, Counted])
def test_a_retriever_loads_its_weights_without_initialising_them_or_falls_back_to_building_it(cls, tmp_path):
    torch.manual_seed(0)
    model = cls(LRURecConfig(hidden=16), num_items=50)
    model.save(tmp_path)
    loaded = cls.load(tmp_path)
    state, saved = loaded.state_dict(), model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert all(p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())
    assert not any(torch.is_tensor(value) and value.is_meta for value in vars(loaded).values())
    histories = torch.tensor([[0, 3, 4], [1, 2, 3]])
    assert torch.equal(loaded.eval().score(histories), model.eval().score(histories))


def launch(*args: str, cwd, ok: bool = True) -> subprocess.CompletedProcess:
    done = accelerate_launch(*args, cwd=cwd)
    assert (done.returncode == 0) == ok, done.stderr[-6000:]
    return done


def test_retrieve_train_and_candidates_run_on_two_processes(chain, workdir, tmp_path):
    flags = ["--set", "hidden=16", "--val-every", "10", "--patience", "3", "--max-epochs", "12", "--device", "cpu"]
    cli = ("-m", "llamarec_cli", "retrieve-train", "chain", "-w", str(workdir), *flags)
    whole = launch(*cli, "--json", cwd=tmp_path)
    manifest = __import__("json").loads(whole.stdout)
    assert manifest["processes"] == 2
    whole_weights = load_file(retriever_dir(workdir, "chain", "lrurec") / "model.safetensors")

    # Interrupted between validations, then resumed by the CLI: the same weights as the uninterrupted run.
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import sys\nfrom llamarec_cli.stages.retrieve_train import train_retriever\n"
        "flags = {'hidden': 16, 'val_every': 10, 'patience': 3, 'max_epochs': 12}\n"
        "train_retriever('chain', workdir=sys.argv[1], device='cpu', flags=flags, stop_after_steps=25)\n"
    )
    launch(str(script), str(workdir), cwd=tmp_path)
    refused = launch(*cli, cwd=tmp_path, ok=False)  # the main process's refusal ends both, rather than one waiting
    assert "Continue it with" in refused.stderr and "--resume" in refused.stderr
    with pytest.raises(ArtifactError, match=r"ran on 2 process\(es\), this one on 1"):
        train_retriever("chain", workdir=workdir, device="cpu", flags=FAST, resume=True)
    launch(*cli, "--resume", "--json", cwd=tmp_path)
    resumed = load_file(retriever_dir(workdir, "chain", "lrurec") / "model.safetensors")
    assert all(torch.equal(v, resumed[k]) for k, v in whole_weights.items())

    # Candidates: two processes write what one writes.
    export_candidates("chain", workdir=workdir, k=10, device="cpu")
    parquet, _ = candidates_paths(workdir, "chain", "lrurec")
    alone = pl.read_parquet(parquet)
    launch("-m", "llamarec_cli", "candidates", "chain", "-w", str(workdir), "--k", "10", "--device=cpu", cwd=tmp_path)
    shared = pl.read_parquet(parquet)
    assert shared.drop("scores").equals(alone.drop("scores"))
    assert all(a == pytest.approx(b, abs=1e-5) for a, b in zip(shared["scores"].to_list(), alone["scores"].to_list()))

    # Both stages in one launched process, as the pipeline runs them: the first leaves the process group open. The
    # checkpoint is gone and slow to write: every process must wait for it before the next stage reads it.
    script = tmp_path / "two_stages.py"
    script.write_text(
        "import shutil, sys, time\nfrom llamarec_cli.stages import retrieve_train\n"
        "from llamarec_cli.stages.candidates import export_candidates\n"
        f"shutil.rmtree({str(retriever_dir(workdir, 'chain', 'lrurec'))!r}, ignore_errors=True)\n"
        "finish = retrieve_train.finish\n"
        "retrieve_train.finish = lambda *args: time.sleep(3) or finish(*args)\n"
        "flags = {'hidden': 16, 'val_every': 10, 'patience': 3, 'max_epochs': 12}\n"
        "retrieve_train.train_retriever('chain', workdir=sys.argv[1], device='cpu', flags=flags, restart=True)\n"
        "export_candidates('chain', workdir=sys.argv[1], k=10, device='cpu')\n"
    )
    launch(str(script), str(workdir), cwd=tmp_path)
    assert pl.read_parquet(parquet).drop("scores").equals(alone.drop("scores"))


def test_candidate_lists_leave_out_non_finite_scores():
    from llamarec_cli.stages.candidates import candidate_lists

    items = torch.arange(1, 13, dtype=torch.int32).reshape(3, 4)
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [float("nan"), 2.0, -math.inf, -math.inf], [-math.inf] * 4])
    frame = candidate_lists(items, scores)
    assert frame["candidates"].to_list() == [[1, 2, 3, 4], [6], []]
    assert frame["scores"].to_list() == [[4.0, 3.0, 2.0, 1.0], [2.0], []]
    assert frame.schema == {"candidates": pl.List(pl.UInt32), "scores": pl.List(pl.Float32)}
    assert candidate_lists(items[:0], scores[:0]).height == 0
