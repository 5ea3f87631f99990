"""Score fusion (ranking/fusion.py): the maths, α chosen on validation only, and the stored α used downstream."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import fast_config
from typer.testing import CliRunner

from llamarec_cli.cli import build_app
from llamarec_cli.errors import ConfigError
from llamarec_cli.ranking.examples import valid_subset
from llamarec_cli.ranking.fusion import GRID, choose_alpha, fuse, fused_ranks, order, rank, resolve_alpha
from llamarec_cli.ranking.prompts import Example
from llamarec_cli.serving.recommender import Recommender
from llamarec_cli.stages.candidates import load_candidates
from llamarec_cli.stages.evaluate import evaluate, fused_name, load_ranker
from llamarec_cli.stages.rank_train import ranker_dir, sample, score_subset, train_ranker


def requests(n=200, k=20, seed=0):
    """Random letter logits, with ties, and descending retriever scores, with ties."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        letters = torch.randint(0, 6, (k,), generator=g).float()  # few values: many ties
        retriever = torch.sort(torch.randint(0, 8, (k,), generator=g).float(), descending=True).values
        out.append((letters, retriever.tolist()))
    return out


def test_alpha_0_is_exactly_the_retrievers_order_and_1_the_rankers():
    for letters, retriever in requests():
        assert order(fuse(letters, retriever, 0.0)) == list(range(len(retriever)))  # ties keep the order shown
        assert order(fuse(letters, retriever, 1.0)) == order(letters)
        for target in (0, 7, 19):
            assert rank(fuse(letters, retriever, 0.0), target) == target + 1
            assert rank(fuse(letters, retriever, 1.0), target) == order(letters).index(target) + 1


def test_fused_scores_by_hand():
    letters, retriever = torch.tensor([2.0, 0.0, 1.0]), [3.0, 2.0, -1.0]
    lp = letters - math.log(sum(math.exp(x) for x in letters.tolist()))
    rp = torch.tensor(retriever) - math.log(sum(math.exp(x) for x in retriever))
    expected = 0.3 * lp.double() + 0.7 * rp.double()
    assert torch.allclose(fuse(letters, retriever, 0.3), expected)
    # the ranker puts 0 first then 2; the retriever 0 then 1: a blend decides between 1 and 2 by weight
    assert order(fuse(letters, retriever, 0.9)) == [0, 2, 1]
    assert order(fuse(letters, retriever, 0.1)) == [0, 1, 2]


def test_ties_keep_the_order_shown_and_a_missing_score_goes_last():
    assert rank(torch.tensor([1.0, 1.0, 1.0]), 2) == 3 and rank(torch.tensor([1.0, 1.0, 1.0]), 0) == 1
    assert rank(torch.tensor([0.0, 2.0, 2.0, 1.0]), 2) == 2
    assert rank(torch.tensor([1.0, float("nan"), 0.0]), 1) == 3
    assert order(torch.tensor([float("nan"), 1.0, 0.0])) == [1, 2, 0]
    nan_letters = torch.tensor([float("nan"), 1.0, 0.0])
    assert order(fuse(nan_letters, [3.0, 2.0, 1.0], 0.5))[-1] == 0
    no_letters = torch.full((3,), float("nan"))  # the ranker gave nothing: the retriever's order stands
    assert order(fuse(no_letters, [1.0, 3.0, 2.0], 0.5)) == [1, 2, 0]


def test_alpha_is_the_best_on_the_requests_given():
    # Retriever scores 20, 19, ... Even users: the true item is 6th for the retriever, the ranker's first (logit 10).
    # Odd users: the true item is the retriever's first, the ranker's second (5 against 10 for the 4th). The even users
    # need 10α > 5(1 - α), the odd ones 3(1 - α) > 5α: only α in (1/3, 3/8) gets both right, 0.35 on the grid.
    examples, scores = [], []
    for user in range(10):
        letters = torch.zeros(20)
        if user % 2 == 0:
            target, letters[5] = 5, 10.0
        else:
            target, letters[3], letters[0] = 0, 10.0, 5.0
        examples.append(Example([1], list(range(20)), target, user, [float(20 - i) for i in range(20)]))
        scores.append(letters)
    choice = choose_alpha(examples, scores)
    curve = {float(a): v for a, v in choice["val"].items()}
    assert set(curve) == set(GRID) and choice["users"] == 10
    assert choice["alpha"] == 0.35 and curve[0.35] == 1.0
    assert curve[0.0] == pytest.approx((1 / math.log2(7) + 1) / 2) and curve[1.0] == pytest.approx(
        (1 + 1 / math.log2(3)) / 2
    )
    assert fused_ranks(examples, scores, 0.35) == [1.0] * 10


def test_fusion_option_is_checked():
    assert resolve_alpha("auto", {"alpha": 0.35, "users": 40}) == (0.35, "chosen on 40 validation users")
    assert resolve_alpha("auto", None)[0] is None and resolve_alpha("none", {"alpha": 0.3, "users": 1})[0] is None
    assert resolve_alpha("0.7", None) == (0.7, "given")
    for bad in ("1.5", "-0.1", "half"):
        with pytest.raises(ConfigError, match="--fusion must be auto"):
            resolve_alpha(bad, None)


def test_alpha_is_chosen_on_validation_and_used_by_evaluate_and_serving(chain_with_candidates, workdir, tiny_llama_dir):
    config = fast_config(tiny_llama_dir, max_val_examples=6, eval_every=1, lr=3e-2)  # early stopping on 6 users
    manifest = train_ranker("chain", workdir=workdir, config=config, device="cpu")
    fusion = manifest["fusion"]
    frame, _ = load_candidates(workdir, chain_with_candidates)
    val = valid_subset(chain_with_candidates, frame, "val", 20).examples
    assert manifest["val_examples"] == 6 and fusion["users"] == len(val) > 6 and fusion["alpha"] in GRID
    assert manifest["best_step"] < manifest["steps"]  # so the users beyond the 6 need the best adapter put back

    # The stored curve is the best adapter's scores on the validation users, recomputed here: no test user enters.
    ranker = load_ranker(chain_with_candidates, workdir, device="cpu")
    scores = score_subset(ranker.model, ranker.encoder, val, 8)
    assert choose_alpha(val, scores) == fusion

    report = evaluate("chain", workdir=workdir, device="cpu")
    alpha = fusion["alpha"]
    assert report["fusion"]["alpha"] == alpha and fused_name(alpha) in report["subset"]
    test = valid_subset(chain_with_candidates, frame, "test").examples
    test_scores = score_subset(ranker.model, ranker.encoder, test, 8)
    assert report["ranks"]["fused"] == fused_ranks(test, test_scores, alpha)
    assert "Fusion: α =" in (workdir / "chain" / "reports" / "evaluate-default.md").read_text()

    # Overwrite the stored α with 0 (re-sealed: an edited manifest is refused otherwise): evaluate's fused order and
    # serving's order become the retriever's exactly.
    from llamarec_cli.artifacts import seal

    path = ranker_dir(workdir, "chain", "default") / "manifest.json"
    stored = json.loads(path.read_text())
    stored["fusion"]["alpha"] = 0.0
    path.write_text(json.dumps(seal(stored)))
    report = evaluate("chain", workdir=workdir, device="cpu")
    assert report["ranks"]["fused"] == report["ranks"]["retriever"]
    assert report["paired_by_order"][fused_name(0.0)]["difference"] == 0.0
    pure = evaluate("chain", workdir=workdir, device="cpu", fusion="none")
    assert set(pure["subset"]) == {"retriever", "ranker"} and pure["ranks"]["ranker"] == report["ranks"]["ranker"]

    rec = Recommender("chain", workdir=workdir, device="cpu")
    result = rec.recommend([1, 2, 3])
    assert rec.alpha == 0.0 and [r["item"] for r in result.ranked] == [c["item"] for c in result.candidates]
    assert sum(r["probability"] for r in result.ranked) == pytest.approx(1.0, abs=1e-5)
    alone = Recommender("chain", workdir=workdir, device="cpu", fusion="none")
    own = alone.recommend([1, 2, 3])
    candidates = [c["item"] for c in own.candidates]
    letters = score_subset(alone.llm, alone.encoder, [Example([1, 2, 3], candidates)], 8)[0]
    assert alone.alpha is None and [r["item"] for r in own.ranked] == [candidates[j] for j in order(letters)]

    out = CliRunner().invoke(build_app(), ["evaluate", "chain", "-w", str(workdir), "--fusion", "2", "--device", "cpu"])
    assert out.exit_code != 0 and "--fusion must be auto" in out.output and "Traceback" not in out.output


def test_fusion_users_contain_the_early_stopping_ones_and_never_trained_ones():
    from types import SimpleNamespace

    from llamarec_cli.ranking.config import RankerConfig
    from llamarec_cli.stages.rank_train import fusion_examples

    val = SimpleNamespace(examples=[Example([1], [2, 3], 0, user) for user in range(50)])
    for negatives in ("retrieved", "random"):
        config = RankerConfig(negatives=negatives, max_val_examples=10, fusion_val_examples=30)
        early = sample(val.examples, 10, config.seed)
        users = {e.user for e in fusion_examples(val, early, config)}
        assert len(users) == 30 and {e.user for e in early} <= users
        everyone = RankerConfig(negatives=negatives, max_val_examples=10)
        assert len(fusion_examples(val, early, everyone)) == 50
    # --negatives validation trains on the users not held out: α is chosen on the held-out ones only
    config = RankerConfig(negatives="validation", max_val_examples=10)
    early = sample(val.examples, 10, config.seed)
    assert fusion_examples(val, early, config) == early


def test_tune_fusion_chooses_again_on_more_users_and_evaluate_uses_it(chain_with_candidates, workdir, tiny_llama_dir):
    train_ranker(
        "chain",
        workdir=workdir,
        config=fast_config(tiny_llama_dir, max_val_examples=4, fusion_val_examples=4),
        device="cpu",
    )
    path = ranker_dir(workdir, "chain", "default") / "manifest.json"
    assert json.loads(path.read_text())["fusion"]["users"] == 4
    out = CliRunner().invoke(build_app(), ["tune-fusion", "chain", "-w", str(workdir), "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    fusion = json.loads(out.stdout)
    frame, _ = load_candidates(workdir, chain_with_candidates)
    val = valid_subset(chain_with_candidates, frame, "val", 20).examples
    assert fusion["users"] == len(val) > 4 and fusion["previous"]["users"] == 4
    ranker = load_ranker(chain_with_candidates, workdir, device="cpu")  # the re-sealed manifest is accepted
    assert fusion["chosen_by"] == "tune-fusion"
    assert {k: v for k, v in fusion.items() if k not in ("previous", "chosen_by")} == choose_alpha(
        val, score_subset(ranker.model, ranker.encoder, val, 8)
    )
    assert evaluate("chain", workdir=workdir, device="cpu")["fusion"]["alpha"] == fusion["alpha"]

    bad = CliRunner().invoke(build_app(), ["tune-fusion", "chain", "-w", str(workdir), "--ranker", "nope"])
    assert bad.exit_code != 0 and "No trained ranker 'nope'" in bad.output and "Traceback" not in bad.output
