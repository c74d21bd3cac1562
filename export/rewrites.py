"""Export-time replacements for layers whose exported form costs memory in ONNX Runtime.

Each one computes what the layer it replaces computes (up to float rounding) and is swapped into the copy of the
model that is traced (``export.graph.EnhanceGraph``), never into the eager model. Together they cut the whole
graph's peak memory in ONNX Runtime on large images by a large share, no slower (README, "ONNX graph", has the
figures).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from codeenhance import CodeEnhance
from codeenhance.blocks import DecoderStage
from codeenhance.swin import Mlp, SwinContext


class ErfGelu(nn.Module):
    """nn.GELU() (the exact, erf form) written as (x * 0.5) * (1 + erf(x / sqrt(2))).

    torch exports nn.GELU as x * (0.5 * (1 + erf(...))), which ONNX Runtime's GeluFusion does not match, so it runs
    five elementwise kernels over the Swin MLP's widest tensor ([P, 4C]) and holds three such tensors at once.
    Written in this order, ONNX Runtime fuses it into one Gelu kernel that holds only its output (after a Gemm,
    see ``TokenLinear``; after a bias Add it would become BiasGelu, which takes a scratch copy). For TensorRT both
    forms are the same supported ops (Div, Erf, Add, Mul); how it fuses them has not been measured here.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 0.5) * (1.0 + torch.erf(x / math.sqrt(2.0)))


class SubpixelUpsampleConv(nn.Module):
    """Nearest x2 upsample then conv3x3 (padding 1), computed without the upsampled tensor.

    Output pixel (2i+a, 2j+b) of the conv over the upsampled map only reads low-resolution pixels i-1..i+1 and
    j-1..j+1, with some of the 3x3 taps landing on the same pixel; summing those taps gives one 3x3 kernel per
    phase (a, b), so the whole thing is a conv3x3 on the low-resolution map with 4x the output channels, then
    DepthToSpace. Same multiply-adds, same result up to float rounding of the summed taps, but the 4x-sized
    upsampled input (the largest tensor of the last decoder stage) never exists.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        plain = (conv.kernel_size, conv.padding, conv.stride, conv.dilation) == ((3, 3), (1, 1), (1, 1), (1, 1))
        if not plain or conv.groups != 1 or conv.padding_mode != "zeros":
            # other padding modes or dilations do not map onto per-phase taps of the low-resolution map
            raise ValueError("SubpixelUpsampleConv needs a plain 3x3 conv with padding 1 (zeros), stride 1, dilation 1")
        # taps[a][r, k]: how original tap k (offset k-1 in the upsampled map) lands on low-res offset r-1, phase a.
        taps = torch.tensor([[[1, 0, 0], [0, 1, 1], [0, 0, 0]], [[0, 0, 0], [1, 1, 0], [0, 0, 1]]],
                            dtype=torch.float64, device=conv.weight.device)
        with torch.no_grad():
            w = conv.weight.detach().double()  # [cout, cin, 3, 3]
            # phases in DepthToSpace's (CRD / pixel_shuffle) order: channel c*4 + a*2 + b
            phased = torch.einsum("arh,ocht,bst->oabcrs", taps, w, taps)  # [cout, 2, 2, cin, 3, 3]
            weight = phased.reshape(-1, *w.shape[1:]).to(conv.weight.dtype)
            bias = None if conv.bias is None else conv.bias.detach().repeat_interleave(4)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_shuffle(nn.functional.conv2d(x, self.weight, self.bias, padding=1), 2)


class TokenLinear(nn.Module):
    """nn.Linear on [..., C] tokens computed as one 2-D GEMM on [-1, C].

    On 3-D tokens the exporter emits MatMul then a bias Add, and ONNX Runtime keeps both [P, out] tensors alive;
    on 2-D it fuses them into one Gemm.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.reshape(-1, x.shape[-1]), self.weight, self.bias).view(*x.shape[:-1], -1)


def export_friendly(net: CodeEnhance) -> None:
    """Swap, in place, the modules whose exported form costs memory in ONNX Runtime for equivalent ones.

    Only for a copy that is traced and thrown away: the swapped modules' state-dict keys no longer match the
    checkpoint format (the decoder's block indices shift, the sub-pixel weights are buffers).
    """
    for swin in (m for m in net.modules() if isinstance(m, SwinContext)):
        for module in list(swin.modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.Linear):
                    setattr(module, name, TokenLinear(child))
    for module in net.modules():
        if isinstance(module, Mlp) and isinstance(module.act, nn.GELU) and module.act.approximate == "none":
            module.act = ErfGelu()
        if isinstance(module, DecoderStage):
            upsample, conv, *rest = module.block
            if isinstance(upsample, nn.Upsample) and upsample.scale_factor == 2.0 and upsample.mode == "nearest":
                module.block = nn.Sequential(SubpixelUpsampleConv(conv), *rest)
