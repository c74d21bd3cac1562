"""The model contract: every fact about the exported graph's interface, said once, for the network, the exporters,
every runtime backend, the engine builder and the Triton model.

Inputs: ``image`` float32 [N,3,H,W] RGB in [0,1]; ``w_texture``, ``w_style`` float32 [N] (one weight per image).
Outputs: ``enhanced`` float32 [N,3,H,W] clamped to [0,1]; optionally ``codes`` int32 [N,1,Hp/4,Wp/4].
N, H and W are dynamic; H, W >= MIN_SIDE. ``check_io`` is the one check of an artifact's declared I/O.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

INPUT_IMAGE, INPUT_W_TEXTURE, INPUT_W_STYLE = "image", "w_texture", "w_style"
INPUT_NAMES = (INPUT_IMAGE, INPUT_W_TEXTURE, INPUT_W_STYLE)
WEIGHT_NAMES = (INPUT_W_TEXTURE, INPUT_W_STYLE)
OUTPUT_ENHANCED, OUTPUT_CODES = "enhanced", "codes"
OUTPUT_NAMES = (OUTPUT_ENHANCED, OUTPUT_CODES)


@dataclass(frozen=True)
class TensorContract:
    """One graph input or output: its name, element type (numpy's name), layout (one letter per axis) and the
    axes that are dynamic, with the symbolic name each carries in the exported graph."""

    name: str
    dtype: str
    layout: str
    dynamic_axes: Mapping[int, str] = field(default_factory=dict)
    optional: bool = False  # an output the artifact may leave out

    @property
    def rank(self) -> int:
        return len(self.layout)


# The symbolic names of the dynamic axes (the exported graph's input and output dims carry them).
BATCH, HEIGHT, WIDTH = "batch", "height", "width"
INPUTS = (
    TensorContract(INPUT_IMAGE, "float32", "NCHW", {0: BATCH, 2: HEIGHT, 3: WIDTH}),
    TensorContract(INPUT_W_TEXTURE, "float32", "N", {0: BATCH}),
    TensorContract(INPUT_W_STYLE, "float32", "N", {0: BATCH}),
)
OUTPUTS = (
    TensorContract(OUTPUT_ENHANCED, "float32", "NCHW", {0: BATCH, 2: HEIGHT, 3: WIDTH}),
    # [N,1,Hp/4,Wp/4]: one code per 4x4 patch of the padded image.
    TensorContract(OUTPUT_CODES, "int32", "NCHW", {0: BATCH}, optional=True),
)
INPUT_RANKS = {t.name: t.rank for t in INPUTS}
INPUT_DTYPES = {t.name: t.dtype for t in INPUTS}
MIN_SIDE = 1  # the smallest H and W the model takes (the flip padding continues its reflection below 16)

# The precision vocabulary. What may be requested: fp32, or fp16 / bf16, which always keep the FP32 islands below
# (a precision without them is not offered: it flips codes). What artifacts and backends report: fp32, or the
# reduced type with "-mixed" (fp16-mixed, bf16-mixed). FP16 alone names the plain, island-free FP16 graph that
# ``export.precision --plain`` writes for comparison only.
FP32, FP16, BF16 = "fp32", "fp16", "bf16"
MIXED_SUFFIX = "-mixed"
FP16_MIXED, BF16_MIXED = FP16 + MIXED_SUFFIX, BF16 + MIXED_SUFFIX
REQUESTABLE_PRECISIONS = (FP32, FP16, BF16)
REPORTED_PRECISION = {FP32: FP32, FP16: FP16_MIXED, BF16: BF16_MIXED}  # requested -> reported


def reported_precision(requested: str) -> str:
    """What an artifact or backend made for ``requested`` (fp32, fp16, bf16) reports: fp32, fp16-mixed, bf16-mixed."""
    if requested not in REPORTED_PRECISION:
        raise InputError(f"precision must be one of {', '.join(REQUESTABLE_PRECISIONS)}, got {requested!r}")
    return REPORTED_PRECISION[requested]


def mixed_precision(reduced: Iterable[str]) -> str:
    """The reported name of a graph holding the reduced types ``reduced`` (e.g. {"fp16"}) beside FP32: fp32 when
    there are none, else e.g. "fp16-mixed" ("bf16+fp16-mixed" for both)."""
    found = sorted(set(reduced))
    return "+".join(found) + MIXED_SUFFIX if found else FP32


# The parts of the network that stay float32 in every mixed-precision form (torch autocast: codeenhance/islands.py;
# the FP16 ONNX graph and OpenVINO bf16: the graph rules of contract/precision_rules.py), with why. Their error is not
# local: a flipped code moves a 4x4 patch, and the global IFT statistics move the whole image.
FP32_ISLANDS = {
    "lookup": "the nearest-code search (distances, ArgMin, the Gather of codebook rows): reduced-precision distances "
              "flip near-tie codes",
    "normalisation": "normalisation statistics (GroupNorm, InstanceNorm, LayerNorm, the IFT mean/std): squares and "
                     "sums overflow or lose precision",
}

# The original's test(): every side is padded (flipped copies) to the next multiple of 32, always by 1..32 pixels
# (the encoder downsamples by 4, then the Swin stage uses 8x8 windows).
PAD_MULTIPLE = 32


def padded_size(n: int, multiple: int = PAD_MULTIPLE) -> int:
    """What the model pads a side of n pixels to: always adds 1..multiple, even when n is a multiple."""
    return (n // multiple + 1) * multiple


# The IFT weights scale the texture and style modulation terms of the decoder
# (out = dec + w_texture * (dec*scale + shift) + w_style * (dec*std + mean)). The network was trained at 1.0;
# 0 turns a term off. Up to 4 leaves headroom for strong settings; beyond it the modulation outweighs the
# decoder feature it modulates by more than the network ever saw, and values like 1e30 overflow float32 into
# black images. NaN and infinities are never meaningful. Each weight is one number for every image or one per image.
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
        raise InputError(f"{name} must be finite and in range: a finite number in [{low:g}, {high:g}] (1.0 is the "
                         f"trained default, 0 turns the term off), got {shown}")
    return values.astype(np.float32)


def per_image_weights(value, count: int, name: str) -> np.ndarray:
    """An IFT weight (one number for all, or one per image) as float32 [count]; InputError outside WEIGHT_RANGE or
    for another number of values."""
    values = check_weight(value, name)
    if values.ndim == 0:
        return np.full(count, values, dtype=np.float32)
    if values.shape != (count,):
        raise InputError(f"{name} must be a float or one value per image ({count}), got shape {values.shape}")
    return values


EXPORT_HINT = "export it with python -m export.onnx"


def check_io(inputs: Iterable[str], outputs: Iterable[str], *, where: str, error: type[Exception] = InputError,
             fix: str = EXPORT_HINT, verdict: str = "does not follow the CodeEnhance graph contract",
             optional_inputs: Iterable[str] = (), extra_inputs: bool = True,
             dtypes: Mapping[str, str] | None = None, ranks: Mapping[str, int | None] | None = None,
             problems: Iterable[str] = ()) -> tuple[str, ...]:
    """Check an artifact's declared inputs and outputs (an ONNX graph, an OpenVINO IR, a TensorRT network or
    engine, a Triton model configuration) against the contract; returns the outputs to read, in contract order
    (``enhanced``, and ``codes`` when the artifact has it).

    ``inputs``/``outputs``: the names the artifact declares, in its order. ``optional_inputs``: contract inputs it
    may lack (an engine whose weights were folded into constants). ``extra_inputs``: whether inputs outside the
    contract are tolerated (not where every input must be fed or covered by a profile). ``dtypes``/``ranks``:
    {input name: numpy dtype name / rank, None when unknown}, checked where the artifact must keep the contract's
    types and ranks. ``problems``: the caller's own findings (e.g. a shape profile), reported in the same message.
    Raises ``error`` with ``where``, ``verdict``, every problem, what was expected and found, and ``fix``;
    ``verdict`` may hold ``{missing}``, the missing names, which are then not listed again.
    """
    inputs, outputs = list(inputs), list(outputs)
    optional = set(optional_inputs)
    missing_inputs = [n for n in INPUT_NAMES if n not in inputs and n not in optional]
    missing_outputs = [t.name for t in OUTPUTS if not t.optional and t.name not in outputs]
    found = []
    if missing_inputs and "{missing}" not in verdict:
        found.append(f"missing input(s) {', '.join(missing_inputs)}")
    if not extra_inputs:
        extra = [n for n in inputs if n not in INPUT_NAMES]
        if extra:
            found.append(f"unexpected input(s) {', '.join(extra)}")
    for name in INPUT_NAMES:
        if dtypes and dtypes.get(name) not in (None, INPUT_DTYPES[name]):
            found.append(f"input {name} is {dtypes[name]}, expected {INPUT_DTYPES[name]}")
        if ranks and name in ranks and ranks[name] != INPUT_RANKS[name]:
            found.append(f"input {name} has rank {'unknown' if ranks[name] is None else ranks[name]}, "
                         f"expected {INPUT_RANKS[name]}")
    if missing_outputs and "{missing}" not in verdict:
        found.append(f"missing output {', '.join(missing_outputs)}")
    found += list(problems)
    missing = missing_inputs + missing_outputs
    if found or missing:
        head = f"{where} {verdict.format(missing=', '.join(missing))}" + (f": {'; '.join(found)}" if found else "")
        optional_note = f" ({', '.join(sorted(optional))} optional)" if optional else ""
        raise error(f"{head} (expected inputs {list(INPUT_NAMES)}{optional_note} and an output {OUTPUT_ENHANCED!r}, "
                    f"found inputs {inputs}, outputs {outputs}); {fix}")
    return tuple(t.name for t in OUTPUTS if t.name in outputs)
