"""Numbers derived from raw measurements: latency percentiles, throughput, speedup, per-megapixel scaling fits."""
from __future__ import annotations

import numpy as np


def latency_stats(samples_s: list[float]) -> dict:
    """trtexec-style summary in milliseconds (numpy's linear-interpolated percentiles, so min<=p50<=p90<=p99)."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "iters": int(ms.size),
        "min": float(ms.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(ms.mean()),
        "max": float(ms.max()),
        "std": float(ms.std()),
        "samples": [float(v) for v in ms],
    }


def throughput(batch: int, hw: tuple[int, int], mean_ms: float) -> dict:
    """Images and input megapixels per second at the mean latency of one batch (sequential calls)."""
    per_s = 1000.0 / mean_ms
    return {"images_per_s": batch * per_s, "megapixels_per_s": batch * hw[0] * hw[1] / 1e6 * per_s}


def fit_line(x: list[float], y: list[float]) -> dict | None:
    """Least-squares y = slope * x + intercept; None with fewer than two distinct x."""
    if len(set(x)) < 2:
        return None
    slope, intercept = np.polyfit(np.asarray(x, np.float64), np.asarray(y, np.float64), 1)
    return {"slope": float(slope), "intercept": float(intercept), "points": len(x)}


def scaling(rows: dict) -> dict:
    """Latency (p50 per call) and peak RSS against input megapixels per call, over the sizes that ran."""
    ok = [r for r in rows.values() if r.get("status") == "ok"]
    mp = [r["megapixels"] * r["batch"] for r in ok]
    latency = fit_line(mp, [r["latency_ms"]["p50"] for r in ok])
    memory = fit_line(mp, [r["memory"]["peak_rss_mb"] for r in ok])
    return {
        "x": "input megapixels per call (batch x H x W / 1e6)",
        "latency_ms_per_mp": latency and latency["slope"],
        "latency_intercept_ms": latency and latency["intercept"],
        "memory_mb_per_mp": memory and memory["slope"],
        "memory_intercept_mb": memory and memory["intercept"],
        "points": len(ok),
        "note": None if latency else "needs two or more sizes that ran",
    }


def size_record(hw: tuple[int, int], padded: tuple[int, int], batch: int, worker: dict) -> dict:
    """One backend at one size: the worker's raw result turned into the reported numbers."""
    base = {"height": hw[0], "width": hw[1], "padded": list(padded), "megapixels": hw[0] * hw[1] / 1e6,
            "batch": batch}
    if worker.get("status") != "ok":
        return {**base, "status": "error", "reason": worker.get("reason", "unknown"),
                "traceback": worker.get("traceback")}
    latency = latency_stats(worker["latencies_s"])
    return {
        **base,
        "status": "ok",
        "load_s": worker["load_s"],
        "first_infer_s": worker["first_infer_s"],
        "first_call_s": worker["load_s"] + worker["first_infer_s"],
        "latency_ms": latency,
        "throughput": throughput(batch, hw, latency["mean"]),
        "memory": worker["memory"],
        "describe": worker["describe"],
        "has_codes": worker["has_codes"],
    }


def speedup(record: dict, reference: dict | None) -> float | None:
    """Reference p50 over this backend's p50 at the same size and batch (>1: faster than the reference)."""
    if not reference or reference.get("status") != "ok" or record.get("status") != "ok":
        return None
    return reference["latency_ms"]["p50"] / record["latency_ms"]["p50"]
