"""Rendering of a finished benchmark: Markdown tables, the JSON file and PNG plots. No measuring here."""
from __future__ import annotations

import json
import math
from pathlib import Path

from export.fidelity import PSNR_CAP_DB


def fmt(v, digits: int = 2) -> str:
    """Numbers to ~3 significant digits for tables; inf/None/NaN spelled out."""
    if v is None:
        return "–"
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if math.isnan(v):
        return "nan"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 0.01 or v == 0:
        return f"{v:.{digits}f}"
    return f"{v:.2g}"  # small throughputs (MP/s of a slow model) keep their significant digits


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ran(results: dict):
    """(backend name, entry, size label, record) for every size a backend was measured at."""
    for name, entry in results["backends"].items():
        for label, rec in entry.get("sizes", {}).items():
            yield name, entry, label, rec


def latency_table(results: dict) -> str:
    header = ["backend", "precision", "size (padded)", "first call s (load + 1st)", "min ms", "p50 ms", "p90 ms",
              "p99 ms", "mean ms", "img/s", "MP/s", "peak RSS MB", "GPU MB", "speedup"]
    rows = []
    for name, entry, label, r in ran(results):
        size = f"{label} ({r['padded'][0]}x{r['padded'][1]})"
        if r["status"] != "ok":
            rows.append([name, entry["precision"], size, f"error: {r['reason'][:120]}"] + [""] * 10)
            continue
        lat, gpu = r["latency_ms"], r["memory"].get("gpu")
        rows.append([name, entry["precision"], size, f"{fmt(r['first_call_s'])} ({fmt(r['load_s'])} + "
                     f"{fmt(r['first_infer_s'])})", *(fmt(lat[k]) for k in ("min", "p50", "p90", "p99", "mean")),
                     fmt(r["throughput"]["images_per_s"], 3), fmt(r["throughput"]["megapixels_per_s"], 3),
                     fmt(r["memory"]["peak_rss_mb"]), fmt(gpu and gpu.get("peak_mb")),
                     f"{fmt(r['speedup_vs_reference'])}x" if r.get("speedup_vs_reference") else "–"])
    return table(header, rows)


def fidelity_table(results: dict) -> str:
    header = ["backend", "size", "PSNR mean / min dB (inf: identical)", "SSIM mean / min", "max err (8-bit)",
              "mean err (8-bit)", "code agreement mean / min", "NaN/Inf"]
    rows = []
    for name, _, label, r in ran(results):
        s = (r.get("fidelity") or {}).get("summary")
        if s is None:
            continue
        codes = "–" if s["code_agreement_mean"] is None else \
            f"{s['code_agreement_mean']:.4f} / {s['code_agreement_min']:.4f}"
        rows.append([name, label, f"{fmt(s['psnr_mean'])} / {fmt(s['psnr_min'])}",
                     f"{s['ssim_mean']:.4f} / {s['ssim_min']:.4f}", s["max_err_8bit"], fmt(s["mean_err_8bit"], 3),
                     codes, s["nonfinite"]])
    return table(header, rows)


def per_image_table(results: dict) -> str:
    header = ["backend", "size", "image", "PSNR dB", "SSIM", "max err", "mean err", "code agreement", "NaN/Inf"]
    rows = []
    for name, _, label, r in ran(results):
        if name == results["reference"]:
            continue  # identical to itself by construction; its row is in the summary table
        for im in (r.get("fidelity") or {}).get("per_image", []):
            rows.append([name, label, im["image"], fmt(im["psnr"]), f"{im['ssim']:.4f}", im["max_err_8bit"],
                         fmt(im["mean_err_8bit"], 3), fmt(im["code_agreement"], 4), im["nonfinite"]])
    return table(header, rows)


def scaling_table(results: dict) -> str:
    header = ["backend", "ms per MP (slope)", "intercept ms", "peak RSS MB per MP", "intercept MB", "sizes fitted"]
    rows = []
    for name, entry in results["backends"].items():
        s = entry.get("scaling")
        if s is None:
            continue
        rows.append([name, fmt(s["latency_ms_per_mp"]), fmt(s["latency_intercept_ms"]), fmt(s["memory_mb_per_mp"]),
                     fmt(s["memory_intercept_mb"]), s["points"] if not s["note"] else f"{s['points']} ({s['note']})"])
    return table(header, rows)


def not_run_table(results: dict) -> str | None:
    rows = [[name, entry["status"], entry["reason"]] for name, entry in results["backends"].items()
            if entry["status"] in ("skipped", "error")]
    return table(["backend", "status", "reason"], rows) if rows else None


def render_markdown(results: dict) -> str:
    st = results["settings"]

    def load(key: str) -> str:
        return fmt((results["machine"].get(key) or [None])[0])

    parts = [
        "# CodeEnhance latency, memory and fidelity per backend",
        f"Command:\n\n```\n{results['command']}\n```",
        f"Machine: {results['machine_line']}. 1-minute load average {load('load_average_start')} at the start, "
        f"{load('load_average_end')} at the end.",
        f"Model: {results['artifacts']['model']}. Images: {results['image_source']} ({len(results['images'])}: "
        f"{', '.join(results['images'])}). Batch {st['batch']}, warmup {st['warmup']}, {st['iters']} timed calls, "
        f"{st['threads']} threads, device {st['device']}. Latency is wall time per `infer` call of one batch, "
        f"host arrays in and out; peak RSS is the peak resident memory (VmHWM) of a fresh process per backend "
        f"and size, imports included (the share before loading is `baseline_rss_mb` in results.json). "
        f"Speedup = reference p50 / backend p50; the reference is `{results['reference']}` (fp32), measured in "
        f"the same run.",
        "## Latency and memory\n\n" + latency_table(results),
        "## Fidelity vs the PyTorch fp32 reference (clamped output)\n\n" + fidelity_table(results),
        "### Per image\n\n" + per_image_table(results),
        "## Scaling with image size (least-squares fit over sizes)\n\n" + scaling_table(results),
    ]
    not_run = not_run_table(results)
    if not_run:
        parts.append("## Not measured\n\n" + not_run)
    if results.get("plots"):
        parts.append("## Plots\n\n" + "\n".join(f"![{Path(p).stem}]({Path(p).name})" for p in results["plots"]))
    for note in results.get("notes", []):
        parts.append(f"Note: {note}")
    return "\n\n".join(parts) + "\n"


def write_json(results: dict, path: Path) -> None:
    # Python's json writes inf as Infinity (reference PSNR); json.load reads it back as float('inf').
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


def write_plots(results: dict, out: Path) -> tuple[list[str], str | None]:
    """latency.png (p50 and peak RSS vs megapixels, with the fitted lines) and fidelity.png (PSNR per image)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install matplotlib, or the project's dev extra)"
    paths = [plot_scaling(results, out / "latency.png", plt), plot_fidelity(results, out / "fidelity.png", plt)]
    return [str(p) for p in paths if p is not None], None


def plot_scaling(results: dict, path: Path, plt) -> Path:
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, entry in results["backends"].items():
        pts = sorted((r["megapixels"] * r["batch"], r) for r in entry.get("sizes", {}).values() if r["status"] == "ok")
        if not pts:
            continue
        mp = [p for p, _ in pts]
        p50 = [r["latency_ms"]["p50"] for _, r in pts]
        err = [[r["latency_ms"]["p50"] - r["latency_ms"]["min"] for _, r in pts],
               [r["latency_ms"]["p90"] - r["latency_ms"]["p50"] for _, r in pts]]
        line = ax_t.errorbar(mp, p50, yerr=err, marker="o", capsize=3, label=name)[0]
        ax_m.plot(mp, [r["memory"]["peak_rss_mb"] for _, r in pts], marker="o", label=name, color=line.get_color())
        s = entry.get("scaling") or {}
        if s.get("latency_ms_per_mp") is not None:
            xs = [0, max(mp)]
            ax_t.plot(xs, [s["latency_intercept_ms"] + s["latency_ms_per_mp"] * x for x in xs], "--", lw=0.8,
                      color=line.get_color())
    ax_t.set(xlabel="input megapixels per call", ylabel="latency p50 ms (bars: min..p90)", title="Latency")
    ax_m.set(xlabel="input megapixels per call", ylabel="peak RSS MB (fresh process)", title="Host memory")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fidelity(results: dict, path: Path, plt) -> Path | None:
    labels = list(dict.fromkeys(label for *_, label, _ in ran(results)))
    series = {}  # backend -> {(size, image): psnr}; the reference (inf against itself) is left out
    for name, _, label, r in ran(results):
        if name != results["reference"]:
            for im in (r.get("fidelity") or {}).get("per_image", []):
                series.setdefault(name, {})[(label, im["image"])] = im["psnr"]
    if not series:
        return None
    keys = [(label, image) for label in labels for image in results["images"]]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(keys) * len(series) + 2), 4.2))
    for i, (name, values) in enumerate(series.items()):
        ys = [values.get(k, float("nan")) for k in keys]
        ys = [PSNR_CAP_DB if math.isinf(y) else y for y in ys]  # identical outputs drawn at the cap
        ax.bar([j + i * width for j in range(len(keys))], ys, width, label=name)
    ax.set_xticks([j + (len(series) - 1) * width / 2 for j in range(len(keys))])
    ax.set_xticklabels([f"{image}\n{label}" for label, image in keys], fontsize=7, rotation=30, ha="right")
    ax.set(ylabel="PSNR vs PyTorch fp32 (dB)",
           title=f"Fidelity per image (higher is closer; identical images drawn at {PSNR_CAP_DB:g} dB)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
