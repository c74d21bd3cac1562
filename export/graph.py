"""The module that is traced into ONNX: CodeEnhance plus the graph contract (names, clamp, int32 codes).

The eager model is not changed: the graph is traced from a copy whose quantizer is swapped for an
export-time lookup (``gather``: constants prepared here; ``onehot``: the original's one-hot baseline) and whose
memory-hungry layers are swapped for equivalent export-friendly ones (``export.rewrites``).
Padding, Swin masks and cropping are the model's own code, traced as they are.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings

import onnx
import torch
from onnxscript import opset18 as op
from torch import nn

from codeenhance import CodeEnhance
from contract.errors import InputError
from contract.graph import BATCH, INPUTS, INPUT_NAMES, MIN_SIDE, OUTPUT_CODES, OUTPUT_ENHANCED
from codeenhance.quantizer import VectorQuantizer

from .dims import unname_derived_dims
from .rewrites import export_friendly

LOOKUPS = ("gather", "onehot")

# 18 is the lowest opset torch's exporter implements (its down-conversion to 17 fails on Pad), and is above 17,
# where LayerNormalization became one node. TensorRT 10.0's parser reads opsets up to 20, 10.15 up to 24.
# Opset 21 turns GroupNorm into per-channel GroupNormalization, which needs TensorRT >= 10.9.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 18, 21, 18


def positions(z: torch.Tensor) -> torch.Tensor:
    """[B, D, H, W] -> [B*H*W, D], one row per position (row-major over b, h, w, as the original)."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def to_feature_map(rows: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``positions`` for the quantized rows, plus the indices as [B, 1, H, W]."""
    b, d, h, w = like.shape
    return rows.view(b, h, w, d).permute(0, 3, 1, 2), index.view(b, 1, h, w)


class GatherLookup(nn.Module):
    """Nearest code as one MatMul against constants plus a broadcast Add, ArgMin, Gather: no one-hot, no scatter.

    The codebook (embedding + shift), ||e||^2 and -2 e^T are computed once here, so the graph holds them as
    initializers. The lookup ranks codes by ||e||^2 - 2 z.e, the squared distance less ||z||^2: that term is the
    same for every code of a position, so the nearest code is the same, and the graph needs one P x K tensor
    (ONNX Runtime and TensorRT fuse the MatMul and the [K] bias into one GEMM) where the full distance needs a
    second one for ||z||^2 + ||e||^2. Only a float32 near-tie can resolve differently from
    ``codeenhance.nearest_code``: none did on the golden cases and 26 photos (60,928 positions), and verification
    treats near-ties explicitly.
    """

    def __init__(self, quantizer: VectorQuantizer):
        super().__init__()
        with torch.no_grad():
            codebook = quantizer.codebook().detach().clone()
            self.register_buffer("codebook", codebook)
            self.register_buffer("codebook_sq_norm", codebook.pow(2).sum(dim=1))
            self.register_buffer("neg2_codebook_t", (-2.0 * codebook).t().contiguous())

    def distances(self, flat: torch.Tensor) -> torch.Tensor:
        """[P, D] -> squared distances to every code, less ||z||^2: [P, K]."""
        return flat @ self.neg2_codebook_t + self.codebook_sq_norm

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.distances(positions(z)).argmin(dim=1)
        return to_feature_map(self.codebook.index_select(0, index), index, z)


class OneHotLookup(nn.Module):
    """The original VectorQuantizer's lookup (baseline for benchmarks): argmin, scatter a one-hot matrix, matmul.

    The codebook is summed from its two parameters at run time, as the original does.
    """

    def __init__(self, quantizer: VectorQuantizer):
        super().__init__()
        self.quantizer = quantizer

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codebook = self.quantizer.codebook()
        flat = positions(z)
        distance = (flat.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1)) - 2 * (flat @ codebook.t())
        index = distance.argmin(dim=1).unsqueeze(1)
        one_hot = torch.zeros(index.shape[0], codebook.shape[0], dtype=z.dtype, device=z.device).scatter_(1, index, 1.0)
        return to_feature_map(one_hot @ codebook, index, z)


class EnhanceGraph(nn.Module):
    """(image, w_texture, w_style) -> enhanced in [0,1] [, codes int32]: the exported graph's signature."""

    def __init__(self, model: CodeEnhance, *, lookup: str = "gather", with_codes: bool = False):
        super().__init__()
        if lookup not in LOOKUPS:
            raise InputError(f"lookup must be one of {', '.join(LOOKUPS)}, got {lookup!r}")
        self.net = copy.deepcopy(model).eval()
        self.net.reference_encoder = None  # reference-image mode is not part of the graph
        self.net.quantizer = (GatherLookup if lookup == "gather" else OneHotLookup)(self.net.quantizer)
        export_friendly(self.net)
        self.with_codes = with_codes

    def forward(self, image: torch.Tensor, w_texture: torch.Tensor, w_style: torch.Tensor):
        out, codes = self.net(image, w_texture, w_style)
        enhanced = out.clamp(0.0, 1.0)
        # int32: TensorRT handles int64 I/O only with a warning and an int64 binding.
        return (enhanced, codes.to(torch.int32)) if self.with_codes else enhanced


def remainder_by_symbolic(self, other):
    """aten.remainder.Scalar whose divisor may be a symbolic size (the padding's ``arange % (2*H)``).

    torchlib's version only takes a Python number; ONNX Mod (fmod=0) has Python's sign rule for integers.
    """
    if isinstance(other, (int, float)):
        other = op.Constant(value=onnx.helper.make_tensor("divisor", onnx.TensorProto.INT64, [], [int(other)]))
    return op.Mod(self, op.CastLike(other, self))


def dynamic_shapes() -> dict:
    """torch.export dims for the contract's dynamic axes (``contract.graph.INPUTS``), by input name; an axis name
    shared by several inputs (batch) is one dim, and the names become the graph's dim names."""
    dims: dict[str, torch.export.Dim] = {}

    def dim(label: str):
        return dims.setdefault(label, torch.export.Dim(label, min=1 if label == BATCH else MIN_SIDE))

    return {t.name: {axis: dim(label) for axis, label in t.dynamic_axes.items()} for t in INPUTS}


def example_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Batch 2 and an odd size: torch.export specialises dimensions whose example value is 0 or 1.
    gen = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 45, 67, generator=gen), torch.ones(2), torch.ones(2)


def capture(graph: EnhanceGraph) -> torch.export.ExportedProgram:
    """torch.export with dynamic batch, height and width; a failure is raised, never worked around.

    (torch.onnx.export would otherwise fall back to narrowing the dims from torch's "suggested fixes" or to
    draft_export.) Deferred runtime asserts: torch guards a few view-vs-copy layout decisions on the token grid
    (e.g. W >= 32); they cannot change values, ONNX Reshape has no such distinction, and the exported graph
    does not carry them; verification runs sizes on both sides of each (1x1, 13x40, 64x96, ...).
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation chatter from torch.export internals
        return torch.export.export(
            graph, example_inputs(), dynamic_shapes=dynamic_shapes(), strict=False,
            prefer_deferred_runtime_asserts_over_guards=True,
        )


@contextlib.contextmanager
def quiet_registry():
    """The exporter logs a warning per missing torchvision op on every export; none of them is used here."""
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        registry_log.setLevel(level)


def trace(model: CodeEnhance, *, opset: int, lookup: str = "gather", with_codes: bool = False) -> onnx.ModelProto:
    """The torch.export-based ONNX exporter (dynamo=True) on ``EnhanceGraph``."""
    program = capture(EnhanceGraph(model, lookup=lookup, with_codes=with_codes))
    with warnings.catch_warnings(), quiet_registry():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_ENHANCED, OUTPUT_CODES] if with_codes else [OUTPUT_ENHANCED],
            dynamic_shapes=dynamic_shapes(),  # only names the dims here (batch, height, width)
            custom_translation_table={torch.ops.aten.remainder.Scalar: remainder_by_symbolic},
            optimize=True,
            verbose=False,
        )
    return onnx_program.model_proto


def slim(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-code and shape-op cleanup with onnxslim (a maintained tool, no hand-written passes),
    then the intermediate dim names cleared (``unname_derived_dims``: they make ONNX Runtime hold freed buffers)."""
    import onnxslim

    slimmed = onnxslim.slim(model)
    if slimmed is None:
        raise RuntimeError("onnxslim failed to simplify the exported graph")
    return unname_derived_dims(slimmed)
