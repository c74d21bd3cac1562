"""Fidelity of a backend's outputs against the reference's, per image, Polygraphy-comparator style: plain numbers.

Outputs are compared as images would be saved: clamped to [0,1] (non-finite values mapped to 0 or 1 first and
counted separately, so one NaN does not turn every metric into NaN and still shows up in the report).
"""
from __future__ import annotations

import numpy as np

from export.fidelity import PSNR_CAP_DB, code_agreement, max_8bit_error, nonfinite_count, psnr, ssim, to_8bit


def as_image(x: np.ndarray) -> np.ndarray:
    """float [3,H,W] -> float64 [H,W,3] in [0,1], non-finite values clamped like out-of-range ones."""
    x = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(x, 0.0, 1.0).transpose(1, 2, 0)


def compare_image(out: np.ndarray, ref: np.ndarray, codes=None, ref_codes=None) -> dict:
    """All metrics for one image: out/ref float [3,H,W], codes [1,h,w] or None (not reported by the backend)."""
    a, b = as_image(out), as_image(ref)
    return {
        "psnr": psnr(a, b),
        "ssim": ssim(a, b),
        "max_err_8bit": max_8bit_error(a, b),
        "mean_err_8bit": float(np.mean(np.abs(to_8bit(a) - to_8bit(b)))),
        "code_agreement": None if codes is None or ref_codes is None else code_agreement(codes, ref_codes),
        "nonfinite": nonfinite_count(out),
    }


def compare_outputs(names: list[str], out: dict, ref: dict) -> list[dict]:
    """Per-image metrics; ``out``/``ref`` hold "enhanced" [N,3,H,W] and optionally "codes" [N,1,h,w]."""
    rows = []
    for i, name in enumerate(names):
        codes = out["codes"][i] if out.get("codes") is not None else None
        ref_codes = ref["codes"][i] if ref.get("codes") is not None else None
        rows.append({"image": name, **compare_image(out["enhanced"][i], ref["enhanced"][i], codes, ref_codes)})
    return rows


def mean_psnr(values: list[float]) -> float:
    """inf when every image is identical (the reference); otherwise an identical image counts as PSNR_CAP_DB."""
    if all(np.isinf(values)):
        return float("inf")
    return float(np.mean([PSNR_CAP_DB if np.isinf(v) else v for v in values]))


def summarize(rows: list[dict]) -> dict:
    """Mean/min PSNR and SSIM, worst errors, lowest code agreement, total non-finite values."""
    psnrs = [r["psnr"] for r in rows]
    ssims = [r["ssim"] for r in rows]
    agreements = [r["code_agreement"] for r in rows if r["code_agreement"] is not None]
    return {
        "images": len(rows),
        "psnr_mean": mean_psnr(psnrs),
        "psnr_min": float(np.min(psnrs)),
        "ssim_mean": float(np.mean(ssims)),
        "ssim_min": float(np.min(ssims)),
        "max_err_8bit": int(max(r["max_err_8bit"] for r in rows)),
        "mean_err_8bit": float(np.mean([r["mean_err_8bit"] for r in rows])),
        "code_agreement_mean": float(np.mean(agreements)) if agreements else None,
        "code_agreement_min": float(np.min(agreements)) if agreements else None,
        "nonfinite": int(sum(r["nonfinite"] for r in rows)),
    }
