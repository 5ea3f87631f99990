"""Dropout whose mask costs a quarter of the random numbers on CPU.

torch's CPU dropout draws one random number per element, and that alone was a quarter of an LRURec training step
on 2 cores (benchmarks/results/retrieval.md has the profile). Here each 64-bit random word gives the keep/drop
decision of four elements (16 bits each, p rounded to 1/65536): the same distribution, about 4 times faster.
On other devices it is ``torch.nn.functional.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dropout_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Keep-mask (bool) with P(keep) = 1 - p, from 16-bit fields of uniform 64-bit words."""
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    fields = words.view(torch.int16)[:count].view(shape)  # each field uniform on [-32768, 32767]
    return fields >= round(p * 65536) - 32768


class Dropout(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * (dropout_mask(x.shape, self.p).to(x.dtype) * (1 / (1 - self.p)))

    def extra_repr(self) -> str:
        return f"p={self.p}"
