"""Image-level enhancement over any backend: dtype, gray and alpha handling, batching of same-size images, tiling.

Backends see only float32 RGB batches [N,3,H,W] in [0,1]; everything about real images is done here, once.
"""
from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.errors import InputError, ToolkitError
from contract.images import SCALES
from contract.graph import PAD_MULTIPLE, WEIGHT_NAMES, per_image_weights

from .backend import Backend, BackendError
from .registry import BackendSpec, choose_backend

# Errors that fail one image (its shape or type, or the backend refusing it) without stopping the others.
FAILS_ONE_IMAGE = (ValueError, TypeError, ToolkitError)

# Tile overlap, from benchmarks/tiling.py on the golden checkpoint: 0 -> 32 px gains ~1.9 dB against the
# whole-image result, 32 -> 48 or 64 px under 0.05 dB; the tile size matters far more.
DEFAULT_OVERLAP = 32
# Pixels per backend call (batch x H x W) above which images are tiled and batches split: the official model
# needs about 1.6 KB of host memory per padded pixel in eager fp32, so ~3.3 GB at this budget (a 1080p frame).
DEFAULT_MAX_PIXELS = 1920 * 1088

# ITU-R BT.601 luma, the weights of OpenCV's RGB2GRAY, to return gray images for gray inputs.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def backend_for(model_path: str | os.PathLike, backend: str | None = None) -> str:
    """The backend name for ``model_path`` (``backend`` when given, else from the suffix), checked against what
    the file really is; InputError otherwise."""
    return choose_backend(model_path, backend).name


def create_backend(model_path, backend: str | None = None, **options) -> Backend:
    """Instantiate (not load) the backend for ``model_path``; its module is imported only now."""
    return choose_backend(model_path, backend).load_class()(model_path, **options)


class ClippedInputWarning(UserWarning):
    """Float input values outside [0, 1] were clipped (e.g. a float TIFF with highlights above 1)."""


@dataclass
class Layout:
    """What is needed to give the model's RGB output the caller's form back."""

    dtype: np.dtype
    shape: tuple  # the input's shape: (H, W), (H, W, 1), (H, W, 2) gray + alpha, (H, W, 3) or (H, W, 4)
    bgr: bool
    alpha: np.ndarray | None = None
    pil_mode: str | None = None  # a PIL image given in: the result is a PIL image too (palette, CMYK: RGB(A))


def pil_to_array(image) -> tuple[np.ndarray, str]:
    """A PIL image -> (array in RGB order, its mode). Palette, CMYK and other modes are expanded to RGB(A)."""
    if image.mode not in ("L", "LA", "RGB", "RGBA", "I;16", "F"):
        image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
    return np.asarray(image), image.mode


def is_pil_image(image) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "mode") and hasattr(image, "getexif")


def to_model_input(image, channel_order: str = "bgr") -> tuple[np.ndarray, Layout]:
    """An HxW, HxWx1, HxWx2 (gray + alpha), HxWx3 or HxWx4 image (uint8, uint16 or float32 in [0,1]), or a PIL
    image (RGB) -> float32 RGB [3,H,W] in [0,1]. Float values outside [0,1] are clipped with a
    ClippedInputWarning; NaN or infinite values are refused."""
    pil_mode = None
    if is_pil_image(image):
        image, pil_mode = pil_to_array(image)
        channel_order = "rgb"
    image = np.asarray(image)
    if image.dtype not in SCALES:
        raise TypeError(f"image dtype must be uint8, uint16 or float32 in [0,1], got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4)):
        raise InputError(f"image must be HxW (gray), HxWx1, HxWx2 (gray + alpha), HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"image is empty: shape {image.shape}")
    layout = Layout(image.dtype, image.shape, channel_order == "bgr", pil_mode=pil_mode)
    if image.ndim == 3 and image.shape[2] in (2, 4):
        layout.alpha = image[..., -1].copy()
    if image.ndim == 2 or image.shape[2] <= 2:
        gray = image if image.ndim == 2 else image[..., 0]
        color = np.repeat(gray[..., None], 3, axis=2)
    else:
        color = image[..., :3][..., ::-1] if layout.bgr else image[..., :3]
    rgb = color.transpose(2, 0, 1).astype(np.float32)
    if SCALES[image.dtype] != 1.0:
        rgb /= np.float32(SCALES[image.dtype])
    else:
        rgb = clip_float_input(rgb)
    return np.ascontiguousarray(rgb), layout


def clip_float_input(rgb: np.ndarray) -> np.ndarray:
    if not np.isfinite(rgb).all():
        raise InputError(f"image has {int((~np.isfinite(rgb)).sum())} NaN or infinite values; float images must be "
                         "finite, in [0,1]")
    low, high = float(rgb.min()), float(rgb.max())
    if low < 0.0 or high > 1.0:
        outside = float(((rgb < 0) | (rgb > 1)).mean())
        warnings.warn(f"float image values span [{low:.4g}, {high:.4g}]; {100 * outside:.2f}% outside [0,1] were "
                      "clipped (the model takes [0,1]; scale HDR data down first to keep highlights)",
                      ClippedInputWarning, stacklevel=3)
        rgb = np.clip(rgb, 0.0, 1.0)
    return rgb


def from_model_output(rgb: np.ndarray, layout: Layout):
    """float32 RGB [3,H,W] in [0,1] -> an image of the input's dtype, channels and channel order (and a PIL image
    of the input's mode for a PIL input)."""
    pixels = rgb.transpose(1, 2, 0)
    gray = len(layout.shape) == 2 or layout.shape[2] <= 2
    if gray:
        pixels = pixels @ LUMA
    elif layout.bgr:
        pixels = pixels[..., ::-1]
    scale = SCALES[layout.dtype]
    if scale != 1.0:  # the same rounding as the original's saving: clamp, scale, round half to even
        pixels = np.rint(np.clip(pixels, 0, 1) * np.float32(scale))
    out = pixels.astype(layout.dtype)
    if layout.alpha is not None:
        out = np.dstack([out, layout.alpha])
    elif gray and len(layout.shape) == 3:
        out = out[..., None]
    out = np.ascontiguousarray(out)
    if layout.pil_mode is not None:
        return array_to_pil(out)
    return out


def array_to_pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array)  # the mode follows from the shape and dtype: L, LA, RGB, RGBA, I;16, F


def pad_friendly(limit: int) -> int:
    """The largest tile size <= ``limit`` of the form k*m-1 (m: the pad multiple, contract.graph.PAD_MULTIPLE): the
    model pads every side to the next multiple of m and always adds at least one row, so a tile of k*m-1 pixels runs
    at k*m while one of k*m would run at (k+1)*m."""
    m = PAD_MULTIPLE
    return limit if limit < 2 * m - 1 else (limit + 1) // m * m - 1


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of size ``tile`` covering ``length``, overlapping by at least ``overlap``; the last tile
    is moved back to end at the border, so every tile has the full size (and tiles batch together)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def feather(length: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """1-D blend weights of one tile: linear ramps over ``overlap`` pixels on sides shared with a neighbour.
    Never zero (the half-pixel offset), so every pixel's weights sum to a positive number."""
    weight = np.ones(length, dtype=np.float32)
    ramp = (np.arange(min(overlap, length), dtype=np.float32) + 0.5) / max(overlap, 1)
    if not first:
        weight[: ramp.size] = np.minimum(weight[: ramp.size], ramp)
    if not last:
        weight[length - ramp.size:] = np.minimum(weight[length - ramp.size:], ramp[::-1])
    return weight


@dataclass
class Patch:
    """A whole image or one of its tiles, with its place in the image and its blend weights."""

    image: int
    y: int
    x: int
    h: int
    w: int
    weight: np.ndarray | None = None  # [h, w] blend weights; None for a whole image


def plan_patches(index: int, h: int, w: int, tile: tuple[int, int] | None, overlap: int) -> list[Patch]:
    if tile is None or (h <= tile[0] and w <= tile[1]):
        return [Patch(index, 0, 0, h, w)]
    th, tw = min(tile[0], h), min(tile[1], w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    return [
        Patch(index, y, x, th, tw, np.outer(feather(th, overlap, i == 0, i == len(ys) - 1),
                                            feather(tw, overlap, j == 0, j == len(xs) - 1)))
        for i, y in enumerate(ys) for j, x in enumerate(xs)
    ]


class Enhancer:
    """Enhance images with one model file through the backend its file calls for (``runtime.registry``: torch,
    onnxruntime, openvino, aoti, tensorrt, or a triton:// URL), or the backend named by ``backend`` (a name, or a
    Backend object to use as is).

    ``batch``: images (or tiles) of equal size per backend call. ``tile``: None tiles only images beyond the
    backend's largest shape or ``max_pixels`` (``batch`` x H x W per call), with the largest tiles within both;
    an int tiles every image larger than that; 0 never tiles. Tiles overlap by ``overlap`` pixels and are
    blended with linear ramps. The model's IFT statistics are global over the image, so a tiled result only
    approximates the whole-image one, the better the larger the tiles (benchmarks/tiling.py).
    ``channel_order``: "bgr" (OpenCV) or "rgb" for color inputs. Other keywords go to the backend.
    """

    def __init__(self, model_path=None, backend: str | Backend | None = None, *, batch: int = 1,
                 tile: int | None = None, overlap: int = DEFAULT_OVERLAP, max_pixels: int = DEFAULT_MAX_PIXELS,
                 channel_order: str = "bgr", **backend_options):
        if channel_order not in ("bgr", "rgb"):
            raise InputError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        if batch < 1 or max_pixels < 1 or overlap < 0 or (tile is not None and tile < 0):
            raise InputError("batch and max_pixels must be >= 1, overlap and tile >= 0")
        if tile and overlap * 2 >= tile:
            raise InputError(f"overlap ({overlap}) must be less than half the tile ({tile})")
        if backend is not None and not isinstance(backend, (str, BackendSpec)):
            self.backend = backend
        else:
            self.backend = create_backend(model_path, backend, **backend_options)
        self.batch, self.tile, self.overlap, self.max_pixels = batch, tile, overlap, max_pixels
        self.channel_order = channel_order
        self.backend.load()
        self.info = self.backend.describe()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    def tile_for(self, h: int, w: int) -> tuple[int, int] | None:
        """Tile size for an HxW image, or None to run it whole."""
        if self.tile == 0:
            return None
        max_h, max_w = self.info.max_hw or (1 << 30, 1 << 30)  # (tiles are cut to the image in plan_patches)
        if self.tile is None:
            if h <= max_h and w <= max_w and h * w <= self.max_pixels:
                return None
            # The largest tiles allowed: each sees more of the image, so its IFT statistics are closer to the
            # whole image's (benchmarks/tiling.py), and there are fewer tiles to run.
            side = math.isqrt(self.max_pixels)
            tile = (pad_friendly(min(side, max_h)), pad_friendly(min(side, max_w)))
        else:
            tile = (self.tile, self.tile)
        # Within the backend's shape range (a fixed-shape engine has min == max).
        return (max(min(tile[0], max_h), self.info.min_hw[0]), max(min(tile[1], max_w), self.info.min_hw[1]))

    def plan(self, index: int, h: int, w: int) -> list[Patch]:
        tile = self.tile_for(h, w)
        # An automatic tile may be small (tight limits or budget): keep the overlap below half of it.
        overlap = min(self.overlap, (min(tile) - 1) // 2) if tile else 0
        return plan_patches(index, h, w, tile, overlap)

    def enhance(self, image: np.ndarray, w_texture: float = 1.0, w_style: float = 1.0, *, progress=None) -> np.ndarray:
        """One image -> the enhanced image, of the same shape and dtype (gray stays gray, alpha is kept); a PIL
        image gives a PIL image. ``progress`` as in ``enhance_batch``."""
        return self.enhance_batch([image], w_texture, w_style, progress=progress)[0]

    def enhance_batch(self, images: Sequence[np.ndarray], w_texture=1.0, w_style=1.0, *, progress=None,
                      on_tiles=None, errors: str = "raise") -> list:
        """Several images (any sizes); weights are floats or one per image. Same-size images and tiles are run
        together, ``batch`` at a time. ``progress(done, total)``, if given, is called as each patch (a whole image
        or a tile) is done, with the number done so far and the total. ``on_tiles(index, patches)``, if given, is
        called once for each image that is run in tiles, with its plan (``tile_reason`` says why).
        ``errors="return"``: an image that cannot be converted, or whose backend call fails, gets its exception
        in the returned list in place of an image and the others go on (a failed call fails the images it held);
        ``"raise"``: the first error is raised."""
        if errors not in ("raise", "return"):
            raise InputError(f"errors must be 'raise' or 'return', got {errors!r}")
        w_texture, w_style = (per_image_weights(value, len(images), name)
                              for name, value in zip(WEIGHT_NAMES, (w_texture, w_style)))
        failed: dict[int, Exception] = {}
        converted: list = [None] * len(images)
        for i, image in enumerate(images):
            try:
                converted[i] = to_model_input(image, self.channel_order)
            except FAILS_ONE_IMAGE as e:
                if errors == "raise":
                    raise
                failed[i] = e
        inputs = [None if c is None else c[0] for c in converted]
        patches = []
        for i, x in enumerate(inputs):
            if x is not None:
                plan = self.plan(i, *x.shape[1:])  # once per image: the tiling notes come from this plan
                if on_tiles is not None and len(plan) > 1:
                    on_tiles(i, plan)
                patches += plan
        outputs: list = [None] * len(inputs)
        blends = {}  # image -> (weighted sum [3,H,W], weight sum [H,W]) of its tiles
        for done, (patch, out) in enumerate(self._infer_patches(inputs, patches, w_texture, w_style, errors), 1):
            if progress is not None:
                progress(done, len(patches))
            if isinstance(out, Exception) or patch.image in failed:
                failed.setdefault(patch.image, out)
                continue
            if patch.weight is None:
                outputs[patch.image] = out
                continue
            if patch.image not in blends:  # allocated on the image's first tile only
                blends[patch.image] = (np.zeros_like(inputs[patch.image]),
                                       np.zeros(inputs[patch.image].shape[1:], np.float32))
            total, weight = blends[patch.image]
            rows, cols = slice(patch.y, patch.y + patch.h), slice(patch.x, patch.x + patch.w)
            total[:, rows, cols] += out * patch.weight
            weight[rows, cols] += patch.weight
        for i, (total, weight) in blends.items():
            if i not in failed:
                outputs[i] = total / weight
        return [failed[i] if i in failed else from_model_output(out, converted[i][1]) for i, out in enumerate(outputs)]

    def tile_reason(self, h: int, w: int) -> str:
        """Why an HxW image is tiled, for messages."""
        max_h, max_w = self.info.max_hw or (1 << 30, 1 << 30)
        if self.tile:
            return f"above tile={self.tile}"
        if h > max_h or w > max_w:
            return f"above {max_h}x{max_w}, the largest input the {self.info.name} model takes"
        return f"above {self.max_pixels:,} pixels per model call (the memory budget; tile=0 runs it whole)"

    def _infer_patches(self, inputs, patches, w_texture, w_style, errors: str = "raise"):
        """Run the patches grouped by size, ``batch`` at a time within the pixel budget; yields (patch, output),
        or (patch, exception) for each patch of a failed call with ``errors="return"``."""
        by_size = defaultdict(list)
        for patch in patches:
            by_size[patch.h, patch.w].append(patch)
        for (h, w), group in by_size.items():
            per_call = max(1, min(self.batch, self.info.max_batch or self.batch, self.max_pixels // (h * w)))
            for start in range(0, len(group), per_call):
                chunk = group[start:start + per_call]
                batch = np.stack([inputs[p.image][:, p.y:p.y + p.h, p.x:p.x + p.w] for p in chunk])
                index = [p.image for p in chunk]
                try:
                    results = list(self._run(batch, w_texture[index], w_style[index]))
                except FAILS_ONE_IMAGE as e:
                    if errors == "raise":
                        raise
                    results = [e] * len(chunk)
                yield from zip(chunk, results)

    def _run(self, batch: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray) -> np.ndarray:
        """Backend call; inputs below the backend's smallest shape are mirror-padded to it and cropped back.
        A result with NaN or infinite values is an error, never an image."""
        h, w = batch.shape[2:]
        min_h, min_w = self.info.min_hw
        if h < min_h or w < min_w:
            batch = np.ascontiguousarray(np.pad(
                batch, ((0, 0), (0, 0), (0, max(min_h - h, 0)), (0, max(min_w - w, 0))), mode="symmetric"))
        out = self.backend.infer(batch, w_texture, w_style).enhanced[:, :, :h, :w]
        if not np.isfinite(out).all():
            raise BackendError(f"{self.info.name} ({self.info.precision}) returned NaN or infinite values for a "
                               f"{h}x{w} input; nothing was written for it")
        return out
