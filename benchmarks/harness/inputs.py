"""Benchmark images: real photos or synthetic low-light scenes, fitted to every benchmark size.

Every backend sees exactly the same float32 RGB arrays in [0,1] (saved once per size by the parent process),
so fidelity differences come from the backends alone. Reading and the synthetic scenes are export.fidelity's,
the ones the FP16 calibration uses.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from contract.images import read_image
from export.fidelity import fit_max_side, list_images, load_rgb, synthetic_lowlight

SHARED = Path(os.environ.get("CODEENHANCE_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
PHOTO_DIR = SHARED / "data" / "lowlight"


def load_photo(path: Path, longest: int | None) -> np.ndarray:
    """The photo as the CLI reads it (contract.images), downscaled (INTER_AREA) so its longest side is at most
    ``longest``."""
    return fit_max_side(read_image(path), longest)


def fit_to_size(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Centre-crop to the target aspect ratio, then resize: no distortion, and every size shows the same scene."""
    h, w = hw
    ih, iw = image.shape[:2]
    if ih * w > iw * h:  # taller than the target aspect
        ch, cw = max(1, round(iw * h / w)), iw
    else:
        ch, cw = ih, max(1, round(ih * w / h))
    top, left = (ih - ch) // 2, (iw - cw) // 2
    crop = image[top:top + ch, left:left + cw]
    interp = cv2.INTER_AREA if ch >= h else cv2.INTER_CUBIC
    return np.clip(cv2.resize(crop, (w, h), interpolation=interp), 0.0, 1.0)


def source_images(sizes: list[tuple[int, int]], folder: Path | None, count: int, seed: int = 0):
    """(names, HxWx3 images): the first ``count`` photos under ``folder``, or synthetic scenes drawn once at the
    largest height and width of ``sizes`` (so each size is a crop/resize of the same scene, like a photo)."""
    if folder is not None:
        paths = list_images(folder)[:count]
        return [str(p.relative_to(folder)) for p in paths], [load_rgb(p) for p in paths]
    largest = (max(h for h, _ in sizes), max(w for _, w in sizes))
    return [f"synthetic-{i}" for i in range(count)], synthetic_lowlight(count, largest, seed)


def benchmark_images(sizes: list[tuple[int, int]], folder: Path | None, count: int, seed: int = 0):
    """(names, {size: float32 [N,3,H,W]}) for every benchmark size."""
    names, images = source_images(sizes, folder, count, seed)
    arrays = {hw: np.stack([fit_to_size(im, hw).transpose(2, 0, 1) for im in images]).astype(np.float32)
              for hw in sizes}
    return names, arrays
