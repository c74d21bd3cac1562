"""The exported graph's contract, shared by the exporter, every runtime backend and the engine builder.

Inputs: ``image`` float32 [N,3,H,W] RGB in [0,1]; ``w_texture``, ``w_style`` float32 [N].
Outputs: ``enhanced`` float32 [N,3,H,W] clamped to [0,1]; optionally ``codes`` int32 [N,1,Hp/4,Wp/4].
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

INPUT_IMAGE, INPUT_W_TEXTURE, INPUT_W_STYLE = "image", "w_texture", "w_style"
INPUT_NAMES = (INPUT_IMAGE, INPUT_W_TEXTURE, INPUT_W_STYLE)
OUTPUT_ENHANCED, OUTPUT_CODES = "enhanced", "codes"

# Metadata keys written into every artifact (ONNX metadata_props, engine sidecars) and read by the backends.
META_PRECISION = "precision"
META_CHECKPOINT_SHA256 = "checkpoint_sha256"
# Precision names as artifacts and backends report them: "mixed" keeps the FP32 islands (contract/precision_rules.py).
FP32, FP16, FP16_MIXED, BF16_MIXED = "fp32", "fp16", "fp16-mixed", "bf16-mixed"

# The parts of the network that stay float32 in every mixed-precision form (torch autocast: codeenhance/islands.py;
# the FP16 ONNX graph and OpenVINO bf16: the graph rules of contract/precision_rules.py), with why. Their error is not
# local: a flipped code moves a 4x4 patch, and the global IFT statistics move the whole image.
FP32_ISLANDS = {
    "lookup": "the nearest-code search (distances, ArgMin, the Gather of codebook rows): reduced-precision distances "
              "flip near-tie codes",
    "normalisation": "normalisation statistics (GroupNorm, InstanceNorm, LayerNorm, the IFT mean/std): squares and "
                     "sums overflow or lose precision",
}

# The original's test(): every side is padded (flipped copies) to the next multiple of 32, always by 1..32 pixels.
PAD_MULTIPLE = 32


def padded_size(n: int, multiple: int = PAD_MULTIPLE) -> int:
    """What the model pads a side of n pixels to: always adds 1..multiple, even when n is a multiple."""
    return (n // multiple + 1) * multiple


# The IFT weights scale the texture and style modulation terms of the decoder
# (out = dec + w_texture * (dec*scale + shift) + w_style * (dec*std + mean)). The network was trained at 1.0;
# 0 turns a term off. Up to 4 leaves headroom for strong settings; beyond it the modulation outweighs the
# decoder feature it modulates by more than the network ever saw, and values like 1e30 overflow float32 into
# black images. NaN and infinities are never meaningful.
WEIGHT_RANGE = (0.0, 4.0)


def check_weight(value, name: str) -> np.ndarray:
    """``value`` (a number or one per image) as float32, or InputError naming the accepted range."""
    try:
        values = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a number or one number per image, got {value!r}") from e
    low, high = WEIGHT_RANGE
    bad = values[~((values >= low) & (values <= high))]  # NaN fails both comparisons
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad.reshape(-1)[:3])
        raise InputError(f"{name} must be a finite number in [{low:g}, {high:g}] (1.0 is the trained default, "
                         f"0 turns the term off), got {shown}")
    return values.astype(np.float32)

