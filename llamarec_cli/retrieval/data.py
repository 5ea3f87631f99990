"""From a dataset's sequences to tensors: training windows, and the validation/test inputs of METHOD.md §3."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import torch


def pad_left(sequences: list[list[int]], length: int | None = None, value: int = 0) -> torch.Tensor:
    """B x length ids, each row right-aligned (cut to its last ``length``) and left-padded with ``value`` (0, the
    padding item; length: the longest row). The ranker's prompts are padded the same way."""
    length = length or max((len(s) for s in sequences), default=1) or 1
    cut = [seq[-length:] for seq in sequences]
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    starts = length - torch.tensor([len(seq) for seq in cut], dtype=torch.long)
    # One copy for the whole batch (a copy per row was a tenth of exporting a million users' candidates).
    out[torch.arange(length) >= starts[:, None]] = torch.tensor(list(chain.from_iterable(cut)), dtype=torch.long)
    return out


def training_windows(sequences: list[list[int]], max_len: int) -> list[list[int]]:
    """Each training sequence whole if its max_len inputs fit, else windows of max_len + 1 items taken from the
    end (max_len inputs and their next items), stepping by max_len so every later item is a label exactly once.

    A window that starts its sequence and has room begins with a padding id, so its first item is a label read
    from the empty history (as in the reference) whatever shares its batch: before, it was one only when a longer
    window in the batch made left padding put a padding input before it. One-item sequences give no window."""
    windows = []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            start = max(0, end - max_len - 1)
            window = seq[start:end]
            windows.append([0, *window] if start == 0 and len(window) <= max_len else window)
            end -= max_len
    return windows


@dataclass
class EvalSet:
    """The users of one evaluation split: their input history, and the held-out item to find.

    Validation: history = training items, target = the validation item. Test: history = training + validation
    items, target = the test item. The whole history is masked from the ranking; the model reads its last max_len.
    """

    split: str
    users: list[int]
    histories: list[list[int]]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.users)


def eval_set(dataset, split: str) -> EvalSet:
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', not {split!r}")
    train = dataset.sequences("train")
    held = dataset.sequences(split)
    val = dataset.sequences("val") if split == "test" else {}
    users = [u for u in held if u in train]
    histories = [train[u] + val.get(u, []) for u in users]
    return EvalSet(split, users, histories, [held[u][0] for u in users])
