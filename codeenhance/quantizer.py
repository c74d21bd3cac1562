"""Vector quantizer with an export-friendly nearest-code lookup (distance, argmin, gather: no one-hot)."""
from __future__ import annotations

import torch
from torch import nn


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, codebook_sq_norm: torch.Tensor | None = None):
    """Index and value of the nearest codebook row for each row of ``z`` (squared L2, first index on ties).

    z: [N, D]; codebook: [K, D]; codebook_sq_norm: optional precomputed ||e||^2 of shape [K].
    The distance is evaluated as (||z||^2 + ||e||^2) - 2 z.e, the same expression and order as the original,
    so near-ties resolve to the same index.
    """
    index = squared_distances(z, codebook, codebook_sq_norm).argmin(dim=1)
    return index, codebook.index_select(0, index)


def squared_distances(z: torch.Tensor, codebook: torch.Tensor, codebook_sq_norm: torch.Tensor | None = None):
    """[N, K] squared L2 distances of the rows of z to the codebook rows, as (||z||^2 + ||e||^2) - 2 z.e."""
    if codebook_sq_norm is None:
        codebook_sq_norm = codebook.pow(2).sum(dim=1)
    return (z.pow(2).sum(dim=1, keepdim=True) + codebook_sq_norm) - 2 * (z @ codebook.t())


class VectorQuantizer(nn.Module):
    """Codebook = embedding + shift_codebook (the original's weight_shift is 1.0)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(size, dim)
        self.shift_codebook = nn.Parameter(torch.zeros(size, dim))

    def codebook(self) -> torch.Tensor:
        return self.embedding.weight + self.shift_codebook

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z: [B, D, H, W] -> (quantized [B, D, H, W], code indices int64 [B, 1, H, W])."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        index, rows = nearest_code(flat, self.codebook())
        quantized = rows.view(b, h, w, d).permute(0, 3, 1, 2)
        return quantized, index.view(b, 1, h, w)
