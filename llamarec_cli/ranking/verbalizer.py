"""The verbalizer: candidate scores are the logits of their index letters at the last position (METHOD.md §5).

The letter ids are derived from how the answer actually tokenizes after the prompt, not from encoding the letter
alone. With Llama 2, ``tokenizer.encode("A")`` is the piece ``▁A`` (id 319), but after ``### Response:\\n`` the
training target is the piece ``A`` (id 29909); the reference scored the former and trained the latter. Here the same
ids build the training targets (prompts.PromptEncoder) and are read when scoring, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .templates import LETTERS, PromptTemplate


class VerbalizerError(ConfigError):
    """The tokenizer cannot give each candidate letter one token after the template's prompt."""


@dataclass(frozen=True)
class Verbalizer:
    letters: str
    token_ids: tuple[int, ...]

    def ids(self, k: int) -> list[int]:
        """The token ids of the first ``k`` letters; more candidates than letters are refused."""
        if k > len(self.token_ids):
            raise ConfigError(
                f"The ranker can order at most {len(self.token_ids)} candidates (letters {self.letters[0]}-"
                f"{self.letters[-1]}), not {k}. Export fewer: llamarec candidates <dataset> --k {len(self.token_ids)}"
            )
        if k < 1:
            raise ConfigError(f"The ranker needs at least one candidate, got {k}.")
        return list(self.token_ids[:k])


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def derive_verbalizer(tokenizer, template: PromptTemplate, letters: str = LETTERS) -> Verbalizer:
    """Tokenize a rendered prompt with and without each answer letter; the difference must be exactly one token."""
    prompt = template.render(["History item"], [f"Candidate {letter}" for letter in letters])
    prompt_ids = encode(tokenizer, prompt)
    ids = []
    for letter in letters:
        full = encode(tokenizer, prompt + letter)
        answer = full[len(prompt_ids) :]
        if full[: len(prompt_ids)] != prompt_ids or len(answer) != 1:
            pieces = tokenizer.convert_ids_to_tokens(full[-3:])
            raise VerbalizerError(
                f"With this tokenizer, the answer letter '{letter}' after the end of template '{template.name}' "
                f"does not become exactly one new token (the text ends as {pieces}). The verbalizer needs one "
                f"token per letter: use a template whose layout ends with a newline, or another model."
            )
        ids.append(answer[0])
    if len(set(ids)) != len(ids):
        raise VerbalizerError(f"Two answer letters share a token id with this tokenizer: {dict(zip(letters, ids))}.")
    return Verbalizer(letters=letters, token_ids=tuple(ids))


def letter_logits(model, input_ids, attention_mask, letter_ids: list[int]) -> torch.Tensor:
    """One forward pass; the logits of ``letter_ids`` at the last position (rows are left-padded), B x k."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        logits_to_keep=1,
        use_cache=False,
    )
    return out.logits[:, -1, letter_ids].float()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
