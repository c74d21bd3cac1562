"""The FP32 islands of a mixed-precision CodeEnhance in PyTorch: the torch side of ``contract.graph.FP32_ISLANDS``.
The ONNX side (the FP16 graph, OpenVINO bf16) finds the same islands in the graph: ``contract.precision_rules``.

Two forms: ``keep_fp32_islands`` for autocast (fp32 weights, autocast picks each op's dtype) and ``lean_fp16``
(fp16 weights, no autocast, the islands cast explicitly): autocast runs GroupNorm/LayerNorm/Softmax in fp32, so every
norm reads an fp32 copy of its fp16 input and the next convolution casts back, a large share of eager fp16 time at
large sizes (README, "AOTInductor packages"). In ``lean_fp16`` those ops take fp16 in and out; the CUDA kernels
accumulate their statistics in fp32 (``acc_type``), and so do the CPU ones (``opmath``)."""
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
        dtype = args[0].dtype
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        with torch.autocast(args[0].device.type, enabled=False):
            out = self.inner(*args)
        # Back to the caller's dtype (a no-op in fp32; under autocast the next convolution would cast anyway).
        back = lambda o: o.to(dtype) if torch.is_tensor(o) and o.is_floating_point() else o
        return tuple(map(back, out)) if isinstance(out, tuple) else back(out)


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


class OutputLike(nn.Module):
    """Casts the wrapped module's output to the dtype of its input number ``like``: the IFT fusion mixes its fp16
    decoder feature with fp32 statistics (type promotion gives fp32); the decoder after it runs fp16."""

    def __init__(self, inner: nn.Module, like: int):
        super().__init__()
        self.inner, self.like = inner, like

    def forward(self, *args):
        return self.inner(*args).to(args[self.like].dtype)


def keep_fp32_islands(model: CodeEnhance) -> CodeEnhance:
    """Wrap the precision-critical parts of ``model`` in place for mixed-precision inference; returns it.
    One wrapper per island of contract.graph.FP32_ISLANDS: "lookup" is the quantizer, "normalisation" the IFT
    statistics (GroupNorm and LayerNorm already run in fp32 under autocast)."""
    if not isinstance(model.quantizer, Float32Island):
        model.quantizer = Float32Island(model.quantizer)
    for fusion in model.fuse_convs_dict.values():
        fusion = fusion.inner if isinstance(fusion, OutputLike) else fusion
        if not isinstance(fusion.encode_enc2, Float32Output):
            fusion.encode_enc2 = Float32Output(fusion.encode_enc2)
    return model


def lean_fp16(model: CodeEnhance) -> CodeEnhance:
    """Convert ``model`` in place to fp16 weights with the FP32 islands kept (run it without autocast, on fp16
    input); returns it. The quantizer keeps fp32 weights (its codebook) and computes in fp32; the IFT statistics
    are fp32 (``Float32Output``) and the fusion's output is cast back to fp16 (``OutputLike``)."""
    keep_fp32_islands(model)
    model.half()
    model.quantizer.float()
    for name, fusion in list(model.fuse_convs_dict.items()):
        if not isinstance(fusion, OutputLike):
            model.fuse_convs_dict[name] = OutputLike(fusion, like=2)  # (enc, style, dec, w_texture, w_style)
    return model
