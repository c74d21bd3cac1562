"""MobileNetV2 backbone of DeepLabV3+ (output stride 16), as used for CodeEnhance's semantic branch.

Layer layout and names follow the DeepLabV3+ checkpoint format (``low_level_features.0..3``,
``high_level_features.4..17``). Only the 320-channel high-level feature is used.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# (expansion t, output channels c, repeats n, stride s) of MobileNetV2.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
OUT_CHANNELS = 320


class ConvBNReLU6(nn.Sequential):
    """Conv (no padding, no bias), BatchNorm, ReLU6: padding is applied by the caller, as in DeepLabV3+."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, 0, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dilation: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [ConvBNReLU6(cin, hidden, kernel=1)] if expansion != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, dilation=dilation, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout
        # "Fixed" padding for the depthwise 3x3 conv, applied before the whole block (also before the 1x1
        # expansion, so the border holds ReLU6(BN(0)) rather than zeros: reproduced as the original does).
        total = 2 * dilation
        self.padding = (total // 2, total - total // 2) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.pad(x, self.padding))
        return x + y if self.use_residual else y


class MobileNetV2Backbone(nn.Module):
    def __init__(self, output_stride: int = 16):
        super().__init__()
        blocks: list[nn.Module] = [ConvBNReLU6(3, 32, stride=2)]
        cin, current_stride, dilation = 32, 2, 1
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            previous_dilation = dilation
            if current_stride == output_stride:
                stride, dilation = 1, dilation * s
            else:
                stride, current_stride = s, current_stride * s
            for i in range(n):
                if i == 0:
                    blocks.append(InvertedResidual(cin, c, stride, previous_dilation, t))
                else:
                    blocks.append(InvertedResidual(cin, c, 1, dilation, t))
                cin = c
        # Sequential slicing keeps the original indices, which the checkpoint names rely on.
        features = nn.Sequential(*blocks)
        self.low_level_features = features[0:4]
        self.high_level_features = features[4:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.high_level_features(self.low_level_features(x))
