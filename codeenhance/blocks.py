"""Convolutional building blocks: pre-activation residual block, encoder, decoder stage, IFT fusion."""
from __future__ import annotations

import torch
from torch import nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class NormLayer(nn.Module):
    """Wrapper that only exists so parameter names match the checkpoint (``conv.0.norm.weight``)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, act, conv3x3) twice, plus a 1x1 skip when widths differ.

    The original uses SiLU in the encoder/decoder and its default LeakyReLU(0.2) inside the IFT fusion.
    """

    def __init__(self, cin: int, cout: int, groups: int, act: str = "silu"):
        super().__init__()
        make_act = {"silu": lambda: nn.SiLU(), "leakyrelu": lambda: nn.LeakyReLU(0.2)}[act]
        self.conv = nn.Sequential(
            NormLayer(cin, groups),
            make_act(),
            nn.Conv2d(cin, cout, 3, padding=1),
            NormLayer(cout, groups),
            make_act(),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.conv_out = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.conv(x)
        skip = x if self.conv_out is None else self.conv_out(x)
        return res + skip


class Encoder(nn.Module):
    """conv4x4 (output one pixel smaller), then two stride-2 stages; returns the 1/2 and 1/4 features."""

    def __init__(self, channels: tuple[int, int, int], groups: int):
        super().__init__()
        c0, c1, c2 = channels
        self.in_conv = nn.Conv2d(3, c0, 4, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1),
                ResBlock(cout, cout, groups),
                ResBlock(cout, cout, groups),
            )
            for cin, cout in ((c0, c1), (c1, c2))
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.blocks[0](self.in_conv(x))
        quarter = self.blocks[1](half)
        return half, quarter


class DecoderStage(nn.Module):
    """Nearest x2 upsample, conv3x3, two residual blocks."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(cin, cout, 3, padding=1),
            ResBlock(cout, cout, groups),
            ResBlock(cout, cout, groups),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def conv_lrelu_conv(c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 3, padding=1))


def mean_std(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel spatial mean and sqrt(unbiased variance + eps), shaped [B, C, 1, 1]."""
    flat = x.flatten(2)
    std = (flat.var(dim=2) + eps).sqrt()[..., None, None]
    mean = flat.mean(dim=2)[..., None, None]
    return mean, std


class IFTFusion(nn.Module):
    """Skip-connection fusion with user weights for texture (w_texture) and style (w_style).

    out = dec + w_texture * (dec * scale + shift) + w_style * (dec * std + mean), where scale and shift come
    from the encoder feature and (mean, std) are global statistics of a second encoding.
    The weights are tensors of shape [B, 1, 1, 1] so a batch can mix settings.
    """

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.encode_enc = ResBlock(2 * c, c, groups, act="leakyrelu")
        self.encode_enc2 = ResBlock(2 * c, c, groups, act="leakyrelu")
        self.scale = conv_lrelu_conv(c)
        self.shift = conv_lrelu_conv(c)

    def forward(
        self, enc: torch.Tensor, style: torch.Tensor, dec: torch.Tensor, w_texture: torch.Tensor, w_style: torch.Tensor
    ) -> torch.Tensor:
        e = self.encode_enc(torch.cat([enc, dec], dim=1))
        texture = w_texture * (dec * self.scale(e) + self.shift(e))
        mean, std = mean_std(self.encode_enc2(torch.cat([e, style], dim=1)))
        return dec + texture + w_style * (dec * std + mean)
