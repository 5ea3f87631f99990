"""From item ids to the token ids the ranker reads (METHOD.md §5).

Titles are cut to the template's ``title_tokens`` (tokenize, truncate, detokenize); the prompt is BOS followed by the
rendered template, truncated from the left (after BOS) so that prompt plus answer fit in ``max_tokens``; the training
text appends the answer letter's token (the verbalizer's id) and EOS, and only those two carry labels. Batches are
left-padded, so the last position of every row is the prediction position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..retrieval.data import pad_left as pad_rows
from .templates import PromptTemplate
from .verbalizer import Verbalizer, derive_verbalizer, encode

IGNORE = -100  # label of tokens without loss (the prompt and the padding)
ANSWER_TOKENS = 2  # the letter and EOS


@dataclass
class Example:
    """One ranking request: a history, up to 20 candidates in the order shown, (if known) the true one's index, and
    the retriever's scores of the candidates (for score fusion)."""

    history: list[int]
    candidates: list[int]
    target_index: int | None = None
    user: int | None = None
    retriever_scores: list[float] | None = None


class PromptEncoder:
    def __init__(self, tokenizer, template: PromptTemplate, titles: dict[int, str]):
        self.tokenizer, self.template, self.titles = tokenizer, template, titles
        self.verbalizer: Verbalizer = derive_verbalizer(tokenizer, template)
        # BOS starts the text where the tokenizer itself adds one (Llama 2); SmolLM2's "BOS" is a chat marker
        # that its tokenizer never adds, so it is left out there too.
        adds_bos = tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and adds_bos else []
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token, which ends every training answer")
        self.eos = tokenizer.eos_token_id
        self._short: dict[int, str] = {}

    def title(self, item: int) -> str:
        """The item's title cut to ``title_tokens`` tokens; short titles are kept byte for byte."""
        if item not in self._short:
            title = self.titles.get(item, f"item {item}")
            ids = encode(self.tokenizer, title)
            limit = self.template.title_tokens
            self._short[item] = title if len(ids) <= limit else self.tokenizer.decode(ids[:limit]).strip()
        return self._short[item]

    def text(self, example: Example) -> str:
        return self.template.render(
            [self.title(i) for i in example.history[-self.template.history_length :]],
            [self.title(i) for i in example.candidates],
        )

    def prompt_ids(self, example: Example) -> list[int]:
        """BOS + the prompt, cut from the left so that the answer still fits within ``max_tokens``."""
        ids = encode(self.tokenizer, self.text(example))
        keep = self.template.max_tokens - len(self.bos) - ANSWER_TOKENS
        return self.bos + ids[-keep:]

    def training_ids(self, example: Example) -> tuple[list[int], list[int]]:
        """(input ids, labels): the prompt, then the true candidate's letter and EOS; labels only on those two."""
        prompt = self.prompt_ids(example)
        answer = [self.verbalizer.token_ids[example.target_index], self.eos]
        return prompt + answer, [IGNORE] * len(prompt) + answer


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device) -> Batch:
        move = (lambda t: t.to(device)) if device is not None else (lambda t: t)
        labels = move(self.labels) if self.labels is not None else None
        return Batch(move(self.input_ids), move(self.attention_mask), labels)


def pad_left(rows: list[list[int]], pad_id: int, labels: list[list[int]] | None = None) -> Batch:
    """Prompts right-aligned and left-padded with ``pad_id``, their attention mask, and their labels (``IGNORE``
    where padded)."""
    ids = pad_rows(rows, value=pad_id)
    mask = pad_rows([[1] * len(row) for row in rows], length=ids.shape[1])
    label_tensor = pad_rows(labels, length=ids.shape[1], value=IGNORE) if labels is not None else None
    return Batch(ids, mask, label_tensor)


def pad_id(tokenizer) -> int:
    """The pad token (unk for Llama 2, as in the reference), else EOS; padded positions are masked anyway."""
    for token_id in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise ValueError("the tokenizer has no pad, unk or EOS token to pad with")
