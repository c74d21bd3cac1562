"""export.verify judges codes that differ from the reference by exact distances (the official-size quickstart
crashed when the graph's lookup formula and the reference's disagreed on a float32 near-tie)."""
from __future__ import annotations

import numpy as np
import torch

from codeenhance.quantizer import VectorQuantizer
from export.verify import ForcedLookup


def quantizer(rows) -> VectorQuantizer:
    q = VectorQuantizer(len(rows), len(rows[0]))
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor(rows, dtype=torch.float32))
        q.shift_codebook.zero_()
    return q


def test_every_code_that_differs_from_the_reference_is_judged_by_exact_distance():
    # Both positions are nearest to code 0; the graph picked code 2 for position 1.
    q = quantizer([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [5.0, 5.0]])
    z = torch.tensor([[0.0, 0.1], [0.0, 0.0]]).reshape(1, 2, 1, 2)  # [B, D, H, W]: positions (0, 0), (0.1, 0)
    reference = np.array([0, 0])
    # The graph picked code 0 and code 2: position 1 differs from the reference, and the graph's own formula
    # ranking (||e||^2 - 2 z.e) is not what decides whether it is a near-tie.
    lookup = ForcedLookup(q, np.array([0, 2]), reference)
    quantized, codes = lookup(z)
    assert codes.flatten().tolist() == [0, 2]  # the forced codes are used
    np.testing.assert_allclose(quantized[0, :, 0, 1].numpy(), [-1.0, 0.0])
    assert len(lookup.relative_gaps) == 1  # one differing code, measured (never an empty list)
    exact_gap = (0.1 - -1.0) ** 2 - 0.1 ** 2  # ||z - e2||^2 - ||z - e0||^2 at z = (0.1, 0)
    np.testing.assert_allclose(lookup.relative_gaps[0], exact_gap / (0.1 ** 2 + 0.0), rtol=1e-6)  # z is float32


def test_a_true_tie_has_a_zero_gap():
    q = quantizer([[1.0, 0.0], [-1.0, 0.0]])
    z = torch.zeros(1, 2, 1, 1)
    lookup = ForcedLookup(q, np.array([1]), np.array([0]))
    lookup(z)
    assert lookup.relative_gaps == [0.0]
