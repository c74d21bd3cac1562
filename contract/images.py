"""The one image reader and writer of the toolkit (runtime CLI, calibration, benchmarks), over OpenCV.

Pillow only reads what OpenCV's decoder drops: the EXIF orientation (OpenCV applies it only when it may also
drop alpha and depth), the frame count of animations, and whether a file is gray + alpha (OpenCV returns BGRA).
Images are numpy arrays as OpenCV has them: HxW gray, HxWx2 gray + alpha, HxWx3 BGR or HxWx4 BGRA;
uint8, uint16 or float32.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

#: uint/float image dtypes -> the value that stands for full white.
SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".gif")
# Formats OpenCV writes with 16 bits; for the others it would saturate 16-bit values to 255.
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
GRAY_ALPHA_MODES = ("LA", "La", "PA")
PILLOW_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}

# EXIF orientation -> the numpy operations that display the stored pixels upright (EXIF 2.32, tag 0x0112).
ORIENTATION = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


class ImageError(InputError):
    """A file that cannot be read or written as an image; the message says why."""


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def header_facts(data: bytes) -> tuple[int, int, bool]:
    """(EXIF orientation, frame count, gray + alpha) as Pillow reads them from the header; (1, 1, False) for
    what Pillow does not know."""
    from PIL import Image, UnidentifiedImageError  # a dependency; imported on first use like the rest of Pillow

    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(0x0112, 1)
            return (orientation if orientation in ORIENTATION else 1), getattr(image, "n_frames", 1), image.mode in GRAY_ALPHA_MODES
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return 1, 1, False


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> the image, displayed as a viewer shows it (EXIF orientation applied)."""
    if not data:
        raise ImageError("empty file")
    orientation, frames, gray_alpha = header_facts(data)
    if frames > 1:
        raise ImageError(f"has {frames} frames (an animation or a multi-page file); only single images are enhanced: "
                         "extract the frames first (e.g. ffmpeg -i in.gif frames/%04d.png)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError("not a readable image (corrupt, truncated or not an image file)")
    if gray_alpha and image.ndim == 3 and image.shape[2] == 4:
        image = image[..., [0, 3]]  # OpenCV expands gray + alpha to BGRA: B == G == R
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if orientation != 1:
        image = np.ascontiguousarray(ORIENTATION[orientation](image))
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file (any name, including non-ASCII ones) -> the image; ImageError says why it cannot be."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read: {e.strerror or e}") from e
    return decode_image(data)


def encode_image(image: np.ndarray, suffix: str) -> bytes:
    """Encode for ``suffix`` (".png", ".jpg", ...), converting the depth where the format cannot hold the image's.
    Gray + alpha (HxWx2) is written as such by Pillow when 8-bit; neither OpenCV nor Pillow writes 16-bit gray +
    alpha, so that is written as 16-bit BGRA with the gray in all three colour channels."""
    suffix = suffix.lower()
    if image.dtype == np.float32 and suffix not in (".tif", ".tiff"):
        scale = 65535 if suffix in SIXTEEN_BIT_SUFFIXES else 255
        image = np.rint(np.clip(image, 0, 1) * scale).astype(np.uint16 if scale == 65535 else np.uint8)
    if image.dtype == np.uint16 and suffix not in SIXTEEN_BIT_SUFFIXES:
        image = np.rint(image / 257.0).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 2:
        if image.dtype == np.uint8 and suffix in PILLOW_FORMATS:
            return encode_gray_alpha(image, suffix)
        image = np.dstack([image[..., 0]] * 3 + [image[..., 1]])
    try:
        ok, encoded = cv2.imencode(suffix, image)
    except cv2.error as e:
        raise ImageError(f"cannot encode as {suffix}: {str(e).strip().splitlines()[-1]}") from e
    if not ok:
        raise ImageError(f"cannot encode as {suffix}")
    return encoded.tobytes()


def encode_gray_alpha(image: np.ndarray, suffix: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="LA").save(buffer, format=PILLOW_FORMATS[suffix])
    return buffer.getvalue()


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, e.g. LIME/ and MEF/), sorted; ValueError if there are none."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise ImageError(f"{folder} is not a folder of images")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ImageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}")
    return paths


def fit_max_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale (area filter) so the longer side is at most ``max_side``; smaller images are kept as they are."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(16, round(w * scale)), max(16, round(h * scale)))  # cv2 wants (width, height)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def load_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """An image file as float32 RGB [H,W,3] in [0,1] (contract.images' reader; alpha dropped, gray expanded).
    ImageError (a ValueError) names the file when it cannot be read."""
    try:
        image = read_image(path)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from e
    scale = SCALES.get(image.dtype, 1.0)  # float images are taken as they are
    if image.ndim == 3 and image.shape[2] == 2:
        image = image[..., 0]  # gray + alpha
    code = cv2.COLOR_GRAY2RGB if image.ndim == 2 else cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    rgb = cv2.cvtColor(image, code).astype(np.float32) / np.float32(scale)
    return fit_max_side(np.clip(rgb, 0.0, 1.0), max_side)
