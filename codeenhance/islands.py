"""The FP32 islands of a mixed-precision CodeEnhance in PyTorch (autocast): the torch side of
``contract.graph.FP32_ISLANDS``. The ONNX side (the FP16 graph, OpenVINO bf16) finds the same islands in the graph:
``contract.precision_rules``."""
from __future__ import annotations

import torch
from torch import nn

from .network import CodeEnhance


class Float32Island(nn.Module):
    """Runs the wrapped module with autocast off and float32 inputs.

    Used for the vector quantizer: ||z||^2 + ||e||^2 - 2 z.e cancels badly in fp16 and near-ties flip the argmin,
    which changes a whole 4x4 patch of the output (notes/prior-art.md, "How the VQ lookup is exported").
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        with torch.autocast(args[0].device.type, enabled=False):
            return self.inner(*args)


class Float32Output(nn.Module):
    """Casts the wrapped module's output to float32, so that what consumes it runs in fp32.

    Wrapped around IFT's ``encode_enc2``: its output feeds the global mean/variance, which autocast would
    otherwise compute in fp16 (GroupNorm and LayerNorm already run in fp32 under autocast).
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        return self.inner(*args).float()


def keep_fp32_islands(model: CodeEnhance) -> CodeEnhance:
    """Wrap the precision-critical parts of ``model`` in place for mixed-precision inference; returns it.
    One wrapper per island of contract.graph.FP32_ISLANDS: "lookup" is the quantizer, "normalisation" the IFT
    statistics (GroupNorm and LayerNorm already run in fp32 under autocast)."""
    if not isinstance(model.quantizer, Float32Island):
        model.quantizer = Float32Island(model.quantizer)
    for fusion in model.fuse_convs_dict.values():
        if not isinstance(fusion.encode_enc2, Float32Output):
            fusion.encode_enc2 = Float32Output(fusion.encode_enc2)
    return model
