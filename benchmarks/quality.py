"""How good is a checkpoint at enhancing? Held-out photos darkened by the training degradation at two strengths
(PSNR/SSIM of the input, of a tuned global gamma + gain, of the random network and of the trained one), the CC0
sample photos the same way, and real low-light photos (LIME/MEF: no ground truth, mean luminance and pictures).

    python benchmarks/quality.py --ckpt codeenhance/weights/codeenhance_tiny.pth \
        --photos ../shared/data/reference --lowlight ../shared/data/lowlight \
        --out benchmarks/results/cpu-2core/quality.md --picture docs/before_after.png

The held-out names come from the checkpoint's training record (``meta.holdout``), or --holdout N picks them as
training does. The SSIM is export.fidelity.ssim, the one of every fidelity report.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from codeenhance import load_model
from codeenhance.checkpoint import random_model
from codeenhance.degrade import STRENGTHS, TRAINING, degrade
from codeenhance.batches import holdout_names
from contract import cli as common
from contract.images import fit_max_side, list_images, load_rgb
from export.fidelity import psnr, ssim, to_nchw  # the SSIM of every fidelity report (agrees with training's pytorch-msssim)

REPO = Path(__file__).resolve().parents[1]
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
BASELINE = "tuned global gamma + gain"  # tuned per strength: it knows the exposure, the network does not
ONE_CURVE = "one gamma + gain for both strengths"
AUTO_EXPOSURE = "auto exposure (blind gain per photo)"
AUTO_EXPOSURE_LUMA = 0.45  # the mean luminance a blind gain aims for: about the training photos' mean (0.456)
TONE_SIGMA = 4.0  # px: error at scales above this is "tone" (brightness, colour, contrast), the rest "detail"
GAMMAS = np.linspace(0.2, 1.2, 41)
GAINS = np.geomspace(0.5, 6.0, 41)


def run_network(model, rgb: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(to_nchw(rgb))
    return model.enhance(x)[0].clamp(0, 1).numpy().transpose(1, 2, 0)


def darkened(photos: list[tuple[str, np.ndarray]], exposure: float, *key: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(dark, photo) pairs: each photo through the training degradation at ``exposure``, photo i seeded [*key, i]."""
    return [(degrade(rgb, np.random.default_rng([*key, i]), exposure=exposure), rgb) for i, (_, rgb) in enumerate(photos)]


def global_curve(dark: np.ndarray, gamma: float, gain: float) -> np.ndarray:
    return np.clip(gain * dark ** gamma, 0, 1)


def tone_and_detail_psnr(out: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The PSNR the output would have if only the low-pass part of its error were there (Gaussian, TONE_SIGMA),
    and if only the rest were: which of the two a method gets wrong."""
    error = (out - truth).astype(np.float32)
    low = cv2.GaussianBlur(error, (0, 0), TONE_SIGMA)
    return psnr(truth + low, truth), psnr(truth + error - low, truth)


def brightness_fixed_psnr(out: np.ndarray, truth: np.ndarray) -> float:
    """The PSNR after the one gain per photo that fits the output best to the truth (least squares): the error
    that is left when each photo's overall brightness is judged right, which a blind method has to guess."""
    gain = float(np.sum(out * truth) / max(float(np.sum(out * out)), 1e-12))
    return psnr(np.clip(out * gain, 0, 1), truth)


def auto_exposure(dark: np.ndarray) -> np.ndarray:
    """A global gain that brings the photo's mean luminance to AUTO_EXPOSURE_LUMA: knows nothing of the exposure."""
    return np.clip(dark * (AUTO_EXPOSURE_LUMA / max(float(np.mean(dark @ LUMA)), 1e-4)), 0, 1)


def tuned_global_curve(pairs) -> tuple[float, float]:
    """The single (gamma, gain) that maximises the mean PSNR of clip(gain * x**gamma) over the pairs."""
    small = [(fit_max_side(d, 128), fit_max_side(g, 128)) for d, g in pairs]
    best = max(((gm, gn) for gm in GAMMAS for gn in GAINS),
               key=lambda p: np.mean([psnr(global_curve(d, *p), g) for d, g in small]))
    return float(best[0]), float(best[1])


METRICS = ("psnr", "ssim", "luminance", "tone_psnr", "detail_psnr", "brightness_fixed_psnr")


def mean_metrics(outs: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """Every METRICS figure of each output against its photo, averaged over the photos."""
    per_photo = [(psnr(o, g), ssim(o, g), np.mean(o @ LUMA), *tone_and_detail_psnr(o, g), brightness_fixed_psnr(o, g))
                 for o, g in zip(outs, truths)]
    return dict(zip(METRICS, (float(np.mean(column)) for column in zip(*per_photo))))


def evaluate(photos: list[tuple[str, np.ndarray]], models: dict, seed: int) -> dict:
    """{strength: {method: {psnr, ssim, luminance}} + the tuned curve} over the photos."""
    table = {}
    pairs = {strength: darkened(photos, exposure, seed) for strength, exposure in STRENGTHS.items()}
    one_gamma, one_gain = tuned_global_curve([p for ps in pairs.values() for p in ps])
    for strength, ps in pairs.items():
        gamma, gain = tuned_global_curve(ps)
        outputs = {"input": [d for d, _ in ps], BASELINE: [global_curve(d, gamma, gain) for d, _ in ps],
                   ONE_CURVE: [global_curve(d, one_gamma, one_gain) for d, _ in ps],
                   AUTO_EXPOSURE: [auto_exposure(d) for d, _ in ps]}
        for name, model in models.items():
            outputs[name] = [run_network(model, d) for d, _ in ps]
        table[strength] = {name: mean_metrics(outs, [g for _, g in ps]) for name, outs in outputs.items()}
        table[strength][BASELINE].update(gamma=gamma, gain=gain)
        table[strength][ONE_CURVE].update(gamma=one_gamma, gain=one_gain)
        table[strength]["truth luminance"] = float(np.mean([np.mean(g @ LUMA) for _, g in ps]))
    return table


def exposure_sweep(photos: list[tuple[str, np.ndarray]], model, exposures: list[float], seed: int) -> dict:
    """{exposure: PSNR of the trained network, of the curve tuned to that exposure, of the blind gain} over the
    photos: where the network starts to beat a curve that knows the exposure."""
    rows = {}
    for k, exposure in enumerate(exposures):
        pairs = darkened(photos, exposure, seed, 1000 + k)
        gamma, gain = tuned_global_curve(pairs)
        rows[f"{exposure:g}"] = {
            "trained network": float(np.mean([psnr(run_network(model, d), g) for d, g in pairs])),
            BASELINE: float(np.mean([psnr(global_curve(d, gamma, gain), g) for d, g in pairs])),
            AUTO_EXPOSURE: float(np.mean([psnr(auto_exposure(d), g) for d, g in pairs]))}
    return rows


def markdown(title: str, table: dict, count: int) -> list[str]:
    lines = [f"### {title} ({count} photos)", "", "| method | " + " | ".join(f"{s} (x{STRENGTHS[s]:g}) PSNR / SSIM / mean luma" for s in STRENGTHS) + " |",
             "|---|" + "---|" * len(STRENGTHS)]
    methods = [m for m in next(iter(table.values())) if m != "truth luminance"]
    for m in methods:
        cells = []
        for s in STRENGTHS:
            r = table[s][m]
            extra = f" (gamma {r['gamma']:.2f}, gain {r['gain']:.2f})" if "gamma" in r else ""
            cells.append(f"{r['psnr']:.2f} dB / {r['ssim']:.3f} / {r['luminance']:.3f}{extra}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("| (ground truth mean luma) | " + " | ".join(f"{table[s]['truth luminance']:.3f}" for s in STRENGTHS) + " |")
    lines += ["", f"Where the error is: the PSNR with only the tone part of the error (scales above {TONE_SIGMA:g} px: "
              "brightness, colour, contrast), with only the detail part (noise, edges, texture), and the whole PSNR once each "
              "photo's overall brightness is set right (the one gain per photo that fits it best: what is left when the "
              "exposure is judged right).", "",
              "| method | " + " | ".join(f"{s} tone / detail / brightness fixed" for s in STRENGTHS) + " |",
              "|---|" + "---|" * len(STRENGTHS)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(f"{table[s][m]['tone_psnr']:.2f} / {table[s][m]['detail_psnr']:.2f} / "
                                              f"{table[s][m]['brightness_fixed_psnr']:.2f} dB" for s in STRENGTHS) + " |")
    return lines + [""]


def picture(rows: list[list[np.ndarray]], path: Path, cell_width: int) -> None:
    """A grid of RGB images (rows of equal count), each scaled to ``cell_width``, as an 8-bit PNG."""
    def fit(img):
        h, w = img.shape[:2]
        return cv2.resize(img, (cell_width, round(h * cell_width / w)), interpolation=cv2.INTER_AREA)

    lines = []
    for row in rows:
        cells = [fit(c) for c in row]
        height = max(c.shape[0] for c in cells)
        cells = [np.pad(c, ((0, height - c.shape[0]), (0, 4), (0, 0)), constant_values=1.0) for c in cells]
        lines.append(np.pad(np.concatenate(cells, axis=1), ((0, 4), (0, 0), (0, 0)), constant_values=1.0))
    grid = np.round(np.concatenate(lines, axis=0) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])


@common.run_main
def main(argv: list[str] | None = None) -> int:
    p = common.parser("python benchmarks/quality.py", __doc__)
    common.add_checkpoint(p, help="the trained checkpoint")
    p.add_argument("--photos", help="folder of normal-light photos holding the held-out ones (the training folder)")
    p.add_argument("--holdout", type=int, help="recompute the held-out names from --photos (default: the checkpoint's record)")
    p.add_argument("--samples", default=str(REPO / "samples"), help="extra normal-light photos never trained on (default: samples/)")
    p.add_argument("--lowlight", help="folder of real low-light photos (LIME/MEF)")
    p.add_argument("--max-side", type=common.int_in(32), default=512, help="photos are downscaled to this long side (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the degradation draws")
    p.add_argument("--sweep", type=common.finite_float(0, 1, low_open=True), nargs="+", metavar="EXPOSURE",
                   help="also PSNR of the held-out photos against these exposures, e.g. 0.03 0.05 0.1 0.2 0.35 0.5")
    common.add_threads(p, default=torch.get_num_threads())
    common.add_output(p, required=False, help="write the markdown report here (and its .json beside it)", overwrite_help=None)
    p.add_argument("--picture", help="write the before/after picture of the sample photos here (PNG)")
    p.add_argument("--lowlight-picture", help="write a picture of real low-light photos before/after here (PNG)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    trained = load_model(args.ckpt)
    meta = torch.load(args.ckpt, weights_only=True).get("meta", {})
    models = {"random network (same preset)": random_model(trained.config, 0), "trained network": trained}
    report = [f"## Quality of `{Path(args.ckpt).name}`", "",
              f"`python benchmarks/quality.py {' '.join(argv if argv is not None else sys.argv[1:])}`", ""]
    results = {}
    if args.photos:
        every = {q.name: q for q in list_images(args.photos)}
        names = holdout_names(sorted(every), args.holdout) if args.holdout is not None else meta.get("holdout") or []
        if not names:
            p.error("no held-out names: the checkpoint has no training record; pass --holdout N")
        photos = [(n, load_rgb(every[n], args.max_side)) for n in names]
        results["held-out"] = evaluate(photos, models, args.seed)
        report += markdown("Held-out photos, synthetic low light", results["held-out"], len(photos))
        # The photos themselves, not darkened: brighter than any training input (exposure x1), so this shows
        # how the network treats a photo that needs nothing, not a bound on the mild column.
        clean = [run_network(trained, rgb) for _, rgb in photos]
        results["held-out, not darkened"] = reproduced = {
            "psnr": float(np.mean([psnr(o, g) for o, (_, g) in zip(clean, photos)])),
            "ssim": float(np.mean([ssim(o, g) for o, (_, g) in zip(clean, photos)]))}
        report += [f"The same photos not darkened, through the trained network: {reproduced['psnr']:.2f} dB / "
                   f"{reproduced['ssim']:.3f} (exposure x1, outside the training range "
                   f"x{TRAINING.exposure[0]:g}-x{TRAINING.exposure[1]:g}).", ""]
        report += ["Held out: " + ", ".join(names), ""]
        if args.sweep:
            results["sweep"] = sweep = exposure_sweep(photos, trained, sorted(args.sweep), args.seed)
            report += [f"### Held-out photos against exposure ({len(photos)} photos; PSNR)", "",
                       "| exposure | " + " | ".join(methods := list(next(iter(sweep.values())))) + " |",
                       "|---|" + "---|" * len(methods)]
            report += [f"| x{e} | " + " | ".join(f"{v:.2f} dB" for v in row.values()) + " |" for e, row in sweep.items()]
            report.append("")
    samples = [(q.name, load_rgb(q, args.max_side)) for q in list_images(args.samples)] if args.samples else []
    if samples:
        results["samples"] = evaluate(samples, models, args.seed + 1)
        report += markdown("CC0 sample photos (samples/), synthetic low light", results["samples"], len(samples))
    if args.picture and samples:
        rows = []
        for i, (_, rgb) in enumerate(samples):
            strength = list(STRENGTHS)[i % len(STRENGTHS)]
            dark = degrade(rgb, np.random.default_rng([args.seed + 1, i]), exposure=STRENGTHS[strength])
            rows.append([dark, run_network(trained, dark), rgb])
        picture(rows, Path(args.picture), 224)
    if args.lowlight:
        real = [(q, load_rgb(q, args.max_side)) for q in list_images(args.lowlight)]
        outs = [run_network(trained, rgb) for _, rgb in real]
        before = [float(np.mean(rgb @ LUMA)) for _, rgb in real]
        after = [float(np.mean(o @ LUMA)) for o in outs]
        results["lowlight"] = {"count": len(real), "luminance_before": float(np.mean(before)), "luminance_after": float(np.mean(after)),
                               "per_photo": {q.name: [b, a] for (q, _), b, a in zip(real, before, after)}}
        report += [f"### Real low-light photos ({len(real)}, {args.lowlight}): no ground truth", "",
                   f"Mean luminance {np.mean(before):.3f} before, {np.mean(after):.3f} after "
                   f"(per photo: min {min(after):.3f}, max {max(after):.3f} after).", ""]
        if args.lowlight_picture:
            picture([[rgb, o] for (_, rgb), o in list(zip(real, outs))[::3]], Path(args.lowlight_picture), 256)
    text = "\n".join(report)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
