"""SASRec, BERT4Rec and NARM against the Retriever contract: gradients, shapes, padding, config, save/load."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from llamarec_cli import ConfigError
from llamarec_cli.retrieval.data import pad_left

from llamarec_baselines import NARM, BERT4Rec, SASRec
from llamarec_baselines.narm import AdditiveEnergy, right_padding

NUM_ITEMS, MAX_LEN = 50, 10
MODELS = [SASRec, BERT4Rec, NARM]


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: more threads only add synchronisation, which costs dearly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(cls, **values):
    torch.manual_seed(0)
    config = cls.Config(**{"hidden": 16, "max_len": MAX_LEN, **values})
    return cls(config, NUM_ITEMS)


def windows(seed: int = 0) -> torch.Tensor:
    """Training windows as the trainer builds them: up to max_len + 1 items, left-padded, lengths 2..max_len+1."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [MAX_LEN + 1, 2, 5, MAX_LEN, 7]
    return pad_left([torch.randint(1, NUM_ITEMS + 1, (n,), generator=generator).tolist() for n in lengths])


@pytest.mark.parametrize("cls", MODELS)
def test_loss_is_finite_and_reaches_every_parameter(cls):
    model = make(cls).train()
    loss = model.loss(windows())
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert 0.5 * torch.log(torch.tensor(NUM_ITEMS)) < loss < 2 * torch.log(torch.tensor(NUM_ITEMS))  # ~ uniform
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", MODELS)
def test_score_gives_every_item_id(cls):
    model = make(cls).eval()
    histories = pad_left([[3, 4, 5], [1], list(range(1, MAX_LEN + 1))])
    with torch.no_grad():
        scores = model.score(histories)
    assert scores.shape == (3, NUM_ITEMS + 1) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("cls", MODELS)
def test_left_padding_does_not_change_scores(cls):
    model = make(cls).eval()
    history = [7, 3, 9, 12, 1]
    with torch.no_grad():
        alone = model.score(torch.tensor([history]))
        padded = model.score(pad_left([history], length=MAX_LEN))
        in_batch = model.score(pad_left([list(range(20, 20 + MAX_LEN)), history, [4]]))[1:2]
    assert torch.allclose(alone, padded, atol=1e-5)
    assert torch.allclose(alone, in_batch, atol=1e-5)


@pytest.mark.parametrize("cls", [SASRec, NARM])
def test_left_padding_does_not_change_the_training_loss(cls):
    model = make(cls).eval()  # no dropout
    rows = [row[row > 0].tolist() for row in windows()][1:]  # lengths 2, 5, 10, 7
    with torch.no_grad():
        tight = model.loss(pad_left(rows))
        assert torch.allclose(tight, model.loss(pad_left(rows, length=MAX_LEN + 1)), atol=1e-5)
        assert torch.allclose(model.loss(pad_left(rows[:1])), model.loss(pad_left(rows[:1], length=9)), atol=1e-5)


@pytest.mark.parametrize("cls", [SASRec, NARM])
def test_the_loss_at_each_position_is_the_score_of_its_prefix(cls):
    """Causality: position t of the training pass sees exactly the history up to t, as ``score`` does."""
    model = make(cls).eval()
    window = [5, 17, 2, 40, 33, 8]
    with torch.no_grad():
        loss = model.loss(torch.tensor([window]))
        prefix_scores = torch.cat([model.score(torch.tensor([window[:t]])) for t in range(1, len(window))])
        expected = F.cross_entropy(prefix_scores, torch.tensor(window[1:]))
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.parametrize("cls", MODELS)
def test_training_lowers_the_loss_on_a_learnable_task(cls):
    """Rows draw their items from one of 10 topics of 5 items: the next item's topic is the history's."""
    generator = torch.Generator().manual_seed(0)

    def batch(count: int = 32) -> torch.Tensor:
        topics = torch.randint(0, 10, (count, 1), generator=generator)
        items = (topics * 5 + torch.randint(0, 5, (count, MAX_LEN + 1), generator=generator) + 1).tolist()
        lengths = torch.randint(2, MAX_LEN + 2, (count,), generator=generator).tolist()
        return pad_left([row[:n] for row, n in zip(items, lengths)])

    model = make(cls).train()
    losses = []
    for _ in range(60):
        loss = model.loss(batch())
        model.zero_grad()
        loss.backward()
        with torch.no_grad():  # sign descent: Adam's first steps, without torch.optim's slow first import
            for param in model.parameters():
                param -= 1e-2 * param.grad.sign()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3


@pytest.mark.parametrize("cls", MODELS)
def test_save_and_load_give_identical_scores(cls, tmp_path):
    model = make(cls)
    model.loss(windows()).backward()
    with torch.no_grad():  # move the weights off their initial values
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    model.eval()
    model.save(tmp_path / "model")
    loaded = cls.load(tmp_path / "model").eval()
    assert type(loaded) is cls and loaded.config == model.config and loaded.num_items == NUM_ITEMS
    histories = pad_left([[3, 4, 5], [9], list(range(1, MAX_LEN + 1))])
    with torch.no_grad():
        assert torch.equal(model.score(histories), loaded.score(histories))


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (SASRec, {"hidden": 10, "heads": 3}, "multiple of heads"),
        (SASRec, {"dropout": 1.0}, "dropout"),
        (SASRec, {"attn_dropout": -0.1}, "attn_dropout"),
        (SASRec, {"blocks": 0}, "at least 1"),
        (SASRec, {"max_len": 0}, "max_len"),
        (BERT4Rec, {"hidden": 16, "heads": 5}, "multiple of heads"),
        (BERT4Rec, {"mask_prob": 0.0}, "mask_prob"),
        (BERT4Rec, {"mask_prob": 1.5}, "mask_prob"),
        (BERT4Rec, {"max_len": 1}, "max_len"),
        (NARM, {"gru_hidden": 0}, "gru_hidden"),
        (NARM, {"context_dropout": 1.0}, "context_dropout"),
        (NARM, {"hidden": 0}, "hidden"),
    ],
)
def test_config_is_validated(cls, values, message):
    with pytest.raises(ConfigError, match=message):
        cls.Config(**values)


@pytest.mark.parametrize("cls", MODELS)
def test_defaults_follow_the_brief(cls):
    config = cls.Config()
    assert config.hidden == 64 and config.dropout == 0.2
    if cls is not NARM:
        assert (config.blocks, config.heads, config.attn_dropout) == (2, 2, 0.2)
        assert make(cls, max_len=50).position.num_embeddings == 51
    weights = cls(config, 1000).embedding.weight
    assert weights.abs().max() <= 0.04 and 0.012 < weights.std() < 0.02  # truncated normal, std 0.02


def test_bert4rec_masks_and_scores_at_an_appended_mask():
    model = make(BERT4Rec).eval()
    assert model.embedding.num_embeddings == NUM_ITEMS + 2 and model.mask_token == NUM_ITEMS + 1
    full = list(range(1, MAX_LEN + 1))
    with torch.no_grad():
        # A history of max_len items loses its first item to the [MASK]; the positions stay within max_len + 1.
        assert torch.allclose(model.score(torch.tensor([full])), model.score(torch.tensor([full[1:]])), atol=1e-5)
        longer = torch.tensor([list(range(1, MAX_LEN + 6))])
        assert torch.allclose(model.score(longer), model.score(longer[:, -(MAX_LEN - 1) :]), atol=1e-5)
    model.train()
    for mask_prob in (1.0, 1e-9):  # everything masked; nothing drawn, so each row's last item is
        model.config.mask_prob = mask_prob
        assert torch.isfinite(model.loss(windows()))


def test_sasrec_and_narm_read_the_last_max_len_items():
    for cls in (SASRec, NARM):
        model = make(cls).eval()
        longer = torch.tensor([list(range(1, MAX_LEN + 6))])
        with torch.no_grad():
            assert torch.allclose(model.score(longer), model.score(longer[:, -MAX_LEN:]), atol=1e-5)


def test_right_padding_moves_the_items_to_the_front():
    items = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 9]])
    index, lengths = right_padding(items)
    assert lengths.tolist() == [2, 4, 1]
    assert items.gather(1, index).tolist() == [[3, 4, 0, 0], [1, 2, 3, 4], [9, 0, 0, 0]]


@pytest.mark.parametrize("causal", [True, False])
def test_additive_energy_matches_the_plain_formula_and_its_gradients(causal):
    torch.manual_seed(3)
    a = (2 * torch.randn(3, 5, 4, dtype=torch.double)).requires_grad_()
    c = (2 * torch.randn(3, 5 if causal else 6, 4, dtype=torch.double)).requires_grad_()
    v = torch.randn(4, dtype=torch.double, requires_grad=True)
    lengths = torch.tensor([5, 3, 1]) if causal else None  # sorted, longest first
    budget = 2 * c.size(0) * c.size(1) * 4  # two query positions per chunk: several chunks
    got = AdditiveEnergy.apply(a, c, v, lengths, budget)
    plain = F.hardsigmoid(a[:, :, None] + c[:, None]) @ v
    needed = torch.ones(got.shape, dtype=torch.bool)
    if causal:  # the keys j <= t of the real queries t
        needed = torch.ones(5, 5, dtype=torch.bool).tril() & (torch.arange(5)[None, :, None] < lengths[:, None, None])
        assert got[~needed].abs().sum() < plain[~needed].abs().sum()  # some work was skipped
    assert torch.allclose(got[needed], plain[needed])

    def used(a, c, v):
        return AdditiveEnergy.apply(a, c, v, lengths, budget).masked_fill(~needed, 0.0)

    assert torch.autograd.gradcheck(used, (a, c, v))


def test_the_plugin_registers_the_three_retrievers():
    from llamarec_baselines import plugin

    registered = {}
    plugin.register_retrievers(register=lambda name, cls: registered.setdefault(name, cls))
    assert registered == {"sasrec": SASRec, "bert4rec": BERT4Rec, "narm": NARM}
    try:
        points = importlib.metadata.entry_points(group="llamarec")
    except Exception:  # pragma: no cover
        pytest.skip("no entry points")
    names = {ep.name: ep.value for ep in points}
    if "baselines" not in names:
        pytest.skip("llamarec-baselines is not installed (only on PYTHONPATH)")
    assert names["baselines"] == "llamarec_baselines.plugin"


def test_loading_the_plugin_does_not_import_torch():
    """llamarec loads every plugin at start-up; torch waits until a retriever is asked for."""
    code = "import sys, llamarec_baselines.plugin; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
