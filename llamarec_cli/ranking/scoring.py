"""Score ranking requests in left-padded batches: one forward pass per batch, the candidates' letter logits."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .prompts import Example, PromptEncoder, pad_id, pad_left
from .verbalizer import letter_logits


@torch.no_grad()
def score_examples(
    model,
    encoder: PromptEncoder,
    examples: list[Example],
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """The letter logits of each example's candidates (a tensor of its k scores), in the examples' order.

    Prompts of similar length are batched together, so padding (wasted compute) stays small; the scores do not
    depend on the batching because positions are counted from each row's first real token.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    letter_ids = encoder.verbalizer.ids(max((len(e.candidates) for e in examples), default=1))
    prompts = [encoder.prompt_ids(e) for e in examples]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    results: list[torch.Tensor | None] = [None] * len(examples)
    pad = pad_id(encoder.tokenizer)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = pad_left([prompts[i] for i in rows], pad).to(device)
            logits = letter_logits(model, batch.input_ids, batch.attention_mask, letter_ids).cpu()
            for row, i in zip(logits, rows):
                results[i] = row[: len(examples[i].candidates)]
            if progress:
                progress(len(rows))
    finally:
        model.train(was_training)
    return results


def probabilities(scores: torch.Tensor) -> torch.Tensor:
    """A softmax over the candidates' letter logits (METHOD.md §5)."""
    return torch.softmax(scores, dim=-1)


def rank_of_target(scores: torch.Tensor, target_index: int) -> float:
    """1-based rank of the true candidate among the scores; ties count against it (as in evaluation.metrics)."""
    if not math.isfinite(float(scores[target_index])):
        return float(len(scores))
    return float((scores >= scores[target_index]).sum())
