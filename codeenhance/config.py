"""Network hyper-parameters as one small frozen dataclass, with the official preset and two small ones (tiny, small)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from contract.errors import InputError
from contract.graph import PAD_MULTIPLE


@dataclass(frozen=True)
class CodeEnhanceConfig:
    """Sizes of the CodeEnhance generator.

    ``channels`` are the feature widths at full, 1/2 and 1/4 of the padded resolution.
    The MobileNetV2 semantic backbone is fixed (its 320-channel output is part of the checkpoint format).
    """

    channels: tuple[int, int, int] = (64, 128, 256)
    swin_groups: int = 4
    swin_depth: int = 6
    swin_heads: int = 8
    window_size: int = 8
    mlp_ratio: float = 4.0
    codebook_size: int = 1024
    code_dim: int = 512
    norm_groups: int = 32

    # The original pads every image to the next multiple of this (contract.graph.PAD_MULTIPLE, and why).
    pad_multiple: int = PAD_MULTIPLE

    def __post_init__(self) -> None:
        for c in self.channels:
            if c % self.norm_groups:
                raise InputError(f"channel width {c} is not a multiple of norm_groups={self.norm_groups}")
        if self.channels[2] % self.swin_heads:
            raise InputError(f"swin width {self.channels[2]} is not divisible by swin_heads={self.swin_heads}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d


#: The configuration of the released CodeEnhance model (options/test_Unpaired_codeenhance.yaml).
OFFICIAL = CodeEnhanceConfig()

#: A small network with the same structure, for fast tests (about 1/40 of the official cost).
TINY = CodeEnhanceConfig(
    channels=(32, 32, 64),
    swin_groups=1,
    swin_depth=2,
    swin_heads=2,
    codebook_size=64,
    code_dim=32,
)

#: The tiny widths with a 4x larger codebook of 2x wider codes: the same cost per training step and file size as
#: tiny (the codebook is a small share of both), a finer stage-1 prior (8 bits per 4x4 patch instead of 6).
SMALL = dataclasses.replace(TINY, codebook_size=256, code_dim=64)

PRESETS = {"official": OFFICIAL, "tiny": TINY, "small": SMALL}
