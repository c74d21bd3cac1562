"""How close the nearest-code lookup comes to a tie, per checkpoint, on real photos: the share of code positions
whose nearest and second-nearest codes are within 1e-5, 1e-4 and 1e-3 of each other (relative), and the codes used.

    python benchmarks/near_ties.py --ckpt trained=codeenhance/weights/codeenhance_tiny.pth --ckpt random=untrained.pth \
        --images ../shared/data/lowlight [--max-side 256]

The gap is export.verify's: (||z - e2||^2 - ||z - e1||^2) / (||z||^2 + ||e1||^2), exact in float64, so it says how
large a rounding error of the distance terms (fp16, bf16) may flip the code. Prints a Markdown table.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from codeenhance import load_model
from contract import cli as common
from contract.images import list_images, load_rgb

THRESHOLDS = (1e-5, 1e-4, 1e-3)


def relative_gaps(model, images) -> tuple[np.ndarray, np.ndarray]:
    """(relative gap per code position, code index per position) over the images."""
    captured = []
    hook = model.before_quant.register_forward_hook(lambda m, i, out: captured.append(out.detach()))
    try:
        for rgb in images:
            model.enhance(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None])
    finally:
        hook.remove()
    codebook = model.quantizer.codebook().detach().double()
    gaps, codes = [], []
    for z in captured:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double()
        distance = torch.cdist(flat, codebook).pow(2)
        two = distance.topk(2, dim=1, largest=False)
        d1, d2 = two.values[:, 0], two.values[:, 1]
        scale = flat.pow(2).sum(1) + codebook[two.indices[:, 0]].pow(2).sum(1)
        gaps.append(((d2 - d1) / scale).numpy())
        codes.append(two.indices[:, 0].numpy())
    return np.concatenate(gaps), np.concatenate(codes)


@common.run_main
def main(argv: list[str] | None = None) -> int:
    p = common.parser("python benchmarks/near_ties.py", __doc__)
    common.add_checkpoint(p, action="append", metavar="LABEL=PATH", help="checkpoint to measure (repeatable)")
    p.add_argument("--images", required=True, help="folder of photos (searched recursively)")
    p.add_argument("--max-side", type=common.int_in(32), default=256)
    common.add_threads(p, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = [load_rgb(q, args.max_side) for q in list_images(args.images)]
    print(f"{len(images)} photos from {args.images}, longer side {args.max_side}\n")
    print("| checkpoint | positions | " + " | ".join(f"gap < {t:g}" for t in THRESHOLDS) + " | median gap | codes used |")
    print("|---|---:|" + "---:|" * len(THRESHOLDS) + "---:|---:|")
    for item in args.ckpt:
        label, _, path = item.rpartition("=")
        model = load_model(path)
        gaps, codes = relative_gaps(model, images)
        shares = " | ".join(f"{100 * float(np.mean(gaps < t)):.3f}%" for t in THRESHOLDS)
        used = len(np.unique(codes))
        print(f"| {label or path} | {len(gaps)} | {shares} | {float(np.median(gaps)):.2e} | {used} of {model.config.codebook_size} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
