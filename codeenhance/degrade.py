"""Synthetic low-light degradation: the one place that turns a normal-light photo into a training/evaluation input.

A camera-like model in linear light: sRGB decode, exposure gain (mild x0.5 to severe x0.03, log-uniform so every
stop is equally likely), colour cast (white-balance error), Poisson-Gaussian sensor noise, sRGB encode with a
tone-curve (gamma) jitter, optional JPEG. Every draw comes from the numpy Generator passed in, so a seed fixes
the result.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Degradation:
    """Ranges the random degradation draws from (uniform unless said)."""

    exposure: tuple[float, float] = (0.03, 0.5)  # linear-light gain, log-uniform
    photons_at_white: tuple[float, float] = (400.0, 8000.0)  # shot-noise scale before the exposure gain, log-uniform
    read_noise: tuple[float, float] = (0.0005, 0.004)  # Gaussian std in linear light
    cast: float = 0.12  # per-channel gain in [1 - cast, 1 + cast], then renormalised to keep luminance
    gamma: tuple[float, float] = (0.85, 1.18)  # exponent on the encoded image, log-uniform
    jpeg_probability: float = 0.25
    jpeg_quality: tuple[int, int] = (70, 95)


TRAINING = Degradation()

#: The two fixed strengths the quality benchmark reports (same noise/cast/gamma draws, exposure pinned).
STRENGTHS = {"mild": 0.35, "severe": 0.05}


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def degrade(
    rgb: np.ndarray, rng: np.random.Generator, spec: Degradation = TRAINING, *, exposure: float | None = None
) -> np.ndarray:
    """float32 RGB [H,W,3] in [0,1] -> its low-light version (same shape, float32 in [0,1]).

    ``exposure`` pins the gain (the benchmark's fixed strengths); the other draws still come from ``rng``.
    """
    gain = log_uniform(rng, *spec.exposure) if exposure is None else float(exposure)
    photons = log_uniform(rng, *spec.photons_at_white)
    read = rng.uniform(*spec.read_noise)
    cast = rng.uniform(1 - spec.cast, 1 + spec.cast, 3).astype(np.float32)
    cast /= float(cast @ np.array([0.2126, 0.7152, 0.0722], np.float32))
    gamma = log_uniform(rng, *spec.gamma)
    use_jpeg = rng.uniform() < spec.jpeg_probability
    quality = int(rng.integers(spec.jpeg_quality[0], spec.jpeg_quality[1] + 1))

    linear = srgb_to_linear(np.clip(rgb, 0, 1)) * cast * gain
    # Shot noise: the photon count a pixel of this exposure collected; read noise: the sensor's electronics.
    electrons = rng.poisson(np.clip(linear, 0, None) * photons).astype(np.float32) / photons
    noisy = electrons + rng.normal(0.0, read, linear.shape).astype(np.float32)
    out = linear_to_srgb(noisy) ** gamma
    if use_jpeg:
        bgr = np.round(out[..., ::-1] * 255).astype(np.uint8)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255
    return np.ascontiguousarray(np.clip(out, 0, 1), dtype=np.float32)
