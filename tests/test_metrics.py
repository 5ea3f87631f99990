"""Metrics on hand-computed examples, ties and the history mask."""

from __future__ import annotations

import math

import pytest
import torch

from llamarec_cli.evaluation.metrics import MetricSums, mask_history, metrics_at, ranks


def test_ranks_count_ties_against_the_target():
    scores = torch.tensor([[0.0, 5.0, 3.0, 3.0, 1.0], [0.0, 1.0, 1.0, 1.0, 1.0]])
    assert ranks(scores, torch.tensor([2, 1])).tolist() == [3.0, 4.0]  # ties rank before the target


def test_metric_values_by_hand():
    values = metrics_at(torch.tensor([1.0, 3.0, 7.0, 12.0]), ks=(5, 10))
    assert values["Recall@5"].tolist() == [1, 1, 0, 0]
    assert values["Recall@10"].tolist() == [1, 1, 1, 0]
    assert values["MRR@5"].tolist() == pytest.approx([1, 1 / 3, 0, 0])
    assert values["MRR@10"].tolist() == pytest.approx([1, 1 / 3, 1 / 7, 0])
    assert values["NDCG@5"].tolist() == pytest.approx([1, 1 / math.log2(4), 0, 0])
    assert values["NDCG@10"].tolist() == pytest.approx([1, 0.5, 1 / math.log2(8), 0])


def test_history_and_padding_are_masked():
    scores = torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0]])
    history = torch.tensor([[0, 1, 2]])  # left-padded: items 1 and 2 seen
    masked = mask_history(scores.clone(), history)
    assert masked[0, :3].tolist() == [-math.inf] * 3
    assert ranks(masked, torch.tensor([4])).item() == 2.0  # only item 3 is ahead


def test_averages_are_exact_over_users_not_batches():
    sums = MetricSums(ks=(1,))
    sums.add(torch.tensor([1.0, 2.0, 2.0]))  # a batch of 3 users, one hit
    sums.add(torch.tensor([1.0]))  # a last batch of 1 user, a hit
    assert sums.result()["Recall@1"] == pytest.approx(2 / 4)  # per-batch averaging would give (1/3 + 1) / 2
