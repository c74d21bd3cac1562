"""Fidelity of a backend's outputs against the reference's, per image and summarised: export.fidelity's one
comparator (``compare_image``) over the harness's batches."""
from __future__ import annotations

import numpy as np

from contract.graph import OUTPUT_CODES, OUTPUT_ENHANCED
from export.fidelity import capped_psnr, compare_image


def compare_outputs(names: list[str], out: dict, ref: dict) -> list[dict]:
    """Per-image metrics; ``out``/``ref`` hold the graph's outputs by name: enhanced [N,3,H,W] and optionally
    codes [N,1,h,w]."""
    rows = []
    for i, name in enumerate(names):
        codes = out[OUTPUT_CODES][i] if out.get(OUTPUT_CODES) is not None else None
        ref_codes = ref[OUTPUT_CODES][i] if ref.get(OUTPUT_CODES) is not None else None
        enhanced, ref_enhanced = out[OUTPUT_ENHANCED][i], ref[OUTPUT_ENHANCED][i]
        rows.append({"image": name, **compare_image(enhanced, ref_enhanced, codes, ref_codes)})
    return rows


def mean_psnr(values: list[float]) -> float:
    """inf when every image is identical (the reference); otherwise an identical image counts as PSNR_CAP_DB."""
    if all(np.isinf(values)):
        return float("inf")
    return float(np.mean(capped_psnr(values)))


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
