"""Running graphs on images in ONNX Runtime (CPU) and measuring them: activation ranges for calibration,
and metrics comparing a reduced-precision graph with its FP32 original.

Used by export/precision.py and benchmarks/fp16_fidelity.py. Images are float32 RGB [H,W,3] in [0,1];
graph outputs are (enhanced [N,3,H,W][, codes]).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx

from contract.errors import InputError
from contract.graph import INPUT_NAMES
from contract.images import ImageError, fit_max_side, list_images, load_rgb  # noqa: F401  (part of this module's API)
from runtime.onnxruntime_backend import make_session


# SSIM constants of Wang et al. (2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
# A PSNR of identical images is infinite; aggregates cap it so a mean stays a number.
PSNR_CAP_DB = 100.0


# ----------------------------------------------------------------------------------------------- images


def synthetic_lowlight(count: int, size: tuple[int, int] = (192, 256), seed: int = 0) -> list[np.ndarray]:
    """Deterministic stand-ins for low-light photos: smooth shading, edges, texture, a bright lamp, sensor noise.

    Dark (mean ~0.1) with a few saturated pixels, so calibration sees both ends of the range.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = []
    for _ in range(count):
        scene = np.zeros((h, w, 3), np.float32)
        for _ in range(4):  # low-frequency coloured shading
            fy, fx, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * (fy * yy / h + fx * xx / w) + phase)
            scene += wave[..., None] * rng.uniform(0.05, 0.3, 3).astype(np.float32)
        for _ in range(6):  # flat objects with hard edges, at least m pixels wide
            m = max(1, min(8, h // 2, w // 2))
            y0, x0 = rng.integers(0, max(1, h - m)), rng.integers(0, max(1, w - m))
            y1, x1 = rng.integers(y0 + m, h + 1), rng.integers(x0 + m, w + 1)
            scene[y0:y1, x0:x1] = rng.uniform(0.0, 0.8, 3)
        scene += rng.normal(0, 0.05, (h, w, 3)).astype(np.float32)  # texture
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        lamp = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.04 * max(h, w)) ** 2))
        dark = 0.15 * np.clip(scene, 0, 1) ** 1.8 + lamp[..., None] * 1.2
        dark += rng.normal(0, 0.01, dark.shape).astype(np.float32)  # sensor noise
        images.append(np.clip(dark, 0, 1).astype(np.float32))
    return images


def calibration_images(folder: str | Path | None, count: int, max_side: int) -> tuple[list[np.ndarray], str, list[str]]:
    """(images, description, skipped): up to ``count`` spread over the folder's sorted list, or synthetic ones
    (4:3). An unreadable file is skipped (``skipped`` says which and why) and the next one taken; ValueError when
    none can be read."""
    if folder is None:
        side = min(max_side, 256)
        return synthetic_lowlight(count, (side * 3 // 4, side)), f"{count} synthetic low-light images", []
    paths = list_images(folder)
    spread = np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)
    order = list(dict.fromkeys([paths[i] for i in spread] + paths))  # the spread first, the rest as spares
    images, skipped = [], []
    for path in order:
        if len(images) == min(count, len(paths)):
            break
        try:
            images.append(load_rgb(path, max_side))
        except ImageError as e:
            skipped.append(str(e))
    if not images:
        raise InputError(f"none of the images under {folder} can be read: {'; '.join(skipped[:3])}")
    return images, f"{len(images)} images from {folder}", skipped


def to_nchw(image: np.ndarray) -> np.ndarray:
    """[H,W,3] -> contiguous float32 [1,3,H,W]."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


# ------------------------------------------------------------------------------------------ ONNX Runtime


def ort_session(model, threads: int = 2, *, in_node_order: bool = False):
    """A quiet CPU session for a path or serialized bytes, ``threads`` intra-op threads (the machine is shared)."""
    return make_session(model, threads=threads, in_node_order=in_node_order, quiet=True)


def graph_feed(image: np.ndarray, w_texture: float = 1.0, w_style: float = 1.0) -> dict[str, np.ndarray]:
    """The graph's inputs (image, w_texture, w_style) for one [H,W,3] image."""
    one = np.ones(1, np.float32)
    return dict(zip(INPUT_NAMES, (to_nchw(image), one * w_texture, one * w_style)))


def probe_model(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """The graph plus one scalar output max|x| (Abs, ReduceMax) per listed float tensor.

    Exposing the activations themselves would keep every one alive until the run ends (GBs at 256 px).
    Each probe is placed right after the node that makes its tensor and the session runs nodes in that order,
    so an activation is freed as soon as its last reader is done: peak memory stays near a plain run's
    (1.0 vs 0.8 GB for the official model at 192x256; 9+ GB in ONNX Runtime's default order).
    """
    wanted = set(tensors)
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    nodes = list(probed.graph.node)
    del probed.graph.node[:], probed.graph.value_info[:]
    for node in nodes:
        probed.graph.node.append(node)
        for t in (o for o in node.output if o in wanted):
            probed.graph.node.extend([
                onnx.helper.make_node("Abs", [t], [f"{t}__abs"]),
                onnx.helper.make_node("ReduceMax", [f"{t}__abs"], [f"{t}__absmax"], keepdims=0),
            ])
    probed.graph.output.extend(onnx.helper.make_tensor_value_info(f"{t}__absmax", onnx.TensorProto.FLOAT, []) for t in tensors)
    return probed


def activation_ranges(model: onnx.ModelProto, tensors: list[str], images: Sequence[np.ndarray], threads: int = 2):
    """(max |x| of each FP32 tensor over the images, inf for NaN; the graph's own outputs for the first image)."""
    session = ort_session(probe_model(model, tensors).SerializeToString(), threads, in_node_order=True)
    n_out = len(model.graph.output)
    absmax: dict[str, float] = dict.fromkeys(tensors, 0.0)
    first = None
    for image in images:
        values = session.run(None, graph_feed(image))
        first = values[:n_out] if first is None else first
        for t, v in zip(tensors, values[n_out:]):
            absmax[t] = max(absmax[t], float(v) if np.isfinite(v) else math.inf)
    return absmax, first


def compare_on_image(model, image: np.ndarray, reference: Sequence[np.ndarray], threads: int = 2) -> dict:
    """Run a graph (path or bytes) on one image and compare its outputs with ``reference`` (compare_outputs)."""
    outputs = ort_session(model, threads).run(None, graph_feed(image))
    return {"image_hw": list(image.shape[:2]), **compare_outputs(outputs, reference)}


# ---------------------------------------------------------------------------------------------- metrics


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB between two images of values in [0, peak]; inf when identical."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _as_hwc(x: np.ndarray) -> np.ndarray:
    """[1,3,H,W] / [3,H,W] / [H,W,3] / [H,W] -> float64 [H,W,C]."""
    x = np.asarray(x, np.float64)
    if x.ndim == 4:
        x = x[0]
    if x.ndim == 3 and x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = x.transpose(1, 2, 0)
    return x[..., None] if x.ndim == 2 else x


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004), per channel then averaged.

    Gaussian-weighted local statistics (11x11, sigma 1.5, via OpenCV), C1 = (0.01 L)^2, C2 = (0.03 L)^2,
    averaged over the 'valid' region (5 pixels trimmed from each border, as the reference MATLAB code).
    """
    x, y = _as_hwc(a), _as_hwc(b)
    if x.shape != y.shape:
        raise InputError(f"ssim needs images of one shape, got {x.shape} and {y.shape}")
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    blur = lambda t: cv2.GaussianBlur(t, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)
    values = []
    for c in range(x.shape[-1]):
        xc, yc = np.ascontiguousarray(x[..., c]), np.ascontiguousarray(y[..., c])
        mx, my = blur(xc), blur(yc)
        vx, vy, cov = blur(xc * xc) - mx * mx, blur(yc * yc) - my * my, blur(xc * yc) - mx * my
        smap = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        trim = SSIM_WINDOW // 2
        values.append(smap[trim:-trim, trim:-trim].mean() if min(smap.shape) > 2 * trim else smap.mean())
    return float(np.mean(values))


def to_8bit(x: np.ndarray) -> np.ndarray:
    """[0,1] floats to the saved 8-bit values (clamp, x255, round), as the original writes images."""
    return np.round(np.clip(np.asarray(x, np.float64), 0.0, 1.0) * 255.0).astype(np.int16)


def max_8bit_error(a: np.ndarray, b: np.ndarray) -> int:
    """Largest difference, in 8-bit levels, between the two images as they would be saved (255 for NaN/Inf)."""
    if nonfinite_count(a) or nonfinite_count(b):
        return 255
    return int(np.abs(to_8bit(a) - to_8bit(b)).max())


def code_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of positions where two code-index maps pick the same codebook entry."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"code maps differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean(a == b)) if a.size else 1.0


def nonfinite_count(x: np.ndarray) -> int:
    """Number of NaN or +-Inf values."""
    return int(np.size(x) - np.count_nonzero(np.isfinite(x)))


def capped_psnr(values: Sequence[float]) -> list[float]:
    """PSNR values with inf (identical images) replaced by PSNR_CAP_DB, for means and minima."""
    return [min(v, PSNR_CAP_DB) for v in values]


def as_image(x: np.ndarray) -> np.ndarray:
    """An output as it would be saved: float64 [H,W,C] in [0,1], non-finite values clamped like out-of-range ones
    (they are counted apart, so one NaN does not turn every metric into NaN)."""
    x = np.nan_to_num(_as_hwc(x), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(x, 0.0, 1.0)


def compare_image(test: np.ndarray, reference: np.ndarray, codes=None, reference_codes=None) -> dict:
    """The one comparator of an enhanced image with its reference: [1,3,H,W], [3,H,W] or [H,W,3]; codes any shape
    or None (not reported). Used by export.precision, the harness and the fidelity benchmarks alike."""
    a, b = as_image(test), as_image(reference)
    return {
        "psnr": psnr(a, b),
        "ssim": ssim(a, b),
        "max_err_8bit": max_8bit_error(a, b),
        "mean_err_8bit": float(np.mean(np.abs(to_8bit(a) - to_8bit(b)))),
        "code_agreement": None if codes is None or reference_codes is None else code_agreement(codes, reference_codes),
        "nonfinite": nonfinite_count(test),
    }


def summarize(rows: Sequence[dict]) -> dict:
    """Mean and worst of ``compare_image`` rows (identical images count as PSNR_CAP_DB), the largest 8-bit error,
    code agreement mean/worst (None when no row has codes) and the total of NaN/Inf values. The harness keeps its
    own summary (benchmarks/harness/compare.py: its results.json schema, inf when every image is identical)."""
    psnrs = capped_psnr([r["psnr"] for r in rows])
    ssims = [r["ssim"] for r in rows]
    codes = [r["code_agreement"] for r in rows if r["code_agreement"] is not None]
    return {
        "images": len(rows), "psnr_mean": float(np.mean(psnrs)), "psnr_worst": min(psnrs),
        "ssim_mean": float(np.mean(ssims)), "ssim_worst": min(ssims),
        "max_8bit_error": max(r["max_err_8bit"] for r in rows),
        "code_agreement_mean": float(np.mean(codes)) if codes else None,
        "code_agreement_worst": min(codes) if codes else None,
        "nonfinite": sum(r["nonfinite"] for r in rows),
    }


@dataclass(frozen=True)
class FidelityBar:
    """What a reduced-precision artifact (FP16 graph, bf16 IR, int8) must reach against fp32, judged on what a user
    sees: the image. Code agreement is reported beside it, not gated by default: on trained weights neighbouring
    codes decode to near-identical patches, so a flipped code can cost almost nothing in the image (README,
    "Precision on trained weights")."""

    psnr_mean: float = 45.0
    psnr_worst: float = 40.0
    code_agreement: float = 0.0  # 0: reported only

    def failures(self, summary: dict) -> list[str]:
        """What ``summarize``'s result misses of the bar (empty: it passes)."""
        codes = summary.get("code_agreement_mean")
        return [what for what, bad in (
            (f"{summary['nonfinite']} NaN/Inf values", summary["nonfinite"] > 0),
            (f"mean PSNR {summary['psnr_mean']:.1f} < {self.psnr_mean:g} dB", summary["psnr_mean"] < self.psnr_mean),
            (f"worst PSNR {summary['psnr_worst']:.1f} < {self.psnr_worst:g} dB", summary["psnr_worst"] < self.psnr_worst),
            (f"code agreement {100 * (codes or 0):.2f}% < {100 * self.code_agreement:g}%",
             codes is not None and codes < self.code_agreement),
        ) if bad]

    def describe(self) -> str:
        codes = f", code agreement >= {100 * self.code_agreement:g}%" if self.code_agreement else ""
        return f"mean PSNR >= {self.psnr_mean:g} dB, worst >= {self.psnr_worst:g} dB{codes}, no NaN/Inf"


#: The project's bar for every reduced precision (image fidelity against fp32 on trained weights).
REDUCED_PRECISION_BAR = FidelityBar()


def compare_outputs(test: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> dict:
    """``compare_image`` on graph outputs (enhanced[, codes]) of one image."""
    return compare_image(test[0], reference[0], test[1] if len(test) > 1 else None,
                         reference[1] if len(reference) > 1 else None)