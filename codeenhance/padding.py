"""The original's test-time padding: append the flipped image until the size reaches the next multiple."""
from __future__ import annotations

import torch

from contract.graph import PAD_MULTIPLE, padded_size  # noqa: F401  (padded_size: the size flip_pad_to_multiple gives)


def symmetric_indices(n: int, length: int, device=None) -> torch.Tensor:
    """Source index of each of ``length`` positions when a size-n axis is extended as x, flip(x), x, ..."""
    i = torch.arange(length, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def flip_pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Pad [B, C, H, W] on the bottom/right to ``padded_size`` with mirrored copies (edge pixel repeated).

    For H >= 16 this equals the original cat([x, flip(x)])[:Hp]; for smaller images, where the original
    fails, the reflection simply continues. One gather per axis, no loop or branch on the size.
    """
    h, w = x.shape[-2:]
    x = x.index_select(2, symmetric_indices(h, padded_size(h, multiple), x.device))
    return x.index_select(3, symmetric_indices(w, padded_size(w, multiple), x.device))
