"""python -m codeenhance.demo --out PATH: write the embedded default checkpoint (official BasicSR format).

By default the trained checkpoint of --preset (tiny) that ships in the package (codeenhance/weights/MODEL_CARD.md);
--untrained, or a preset without trained weights, writes a seeded random network instead (for stress tests).
"""
from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError, save_demo_checkpoint
from .config import PRESETS
from .pretrained import SHIPPED, write_trained_checkpoint

DEFAULT_PRESET = "tiny"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m codeenhance.demo", description=__doc__)
    p.add_argument("--out", required=True, help="where to write the .pth file")
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help=f"network size (default: {DEFAULT_PRESET}; trained weights ship for: {', '.join(SHIPPED) or 'none'})")
    p.add_argument("--untrained", action="store_true", help="write the seeded random network even where trained weights ship")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (untrained checkpoints only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = p.parse_args(argv)
    trained = not args.untrained and args.preset in SHIPPED
    try:
        if trained:
            path = write_trained_checkpoint(args.out, args.preset, overwrite=args.overwrite)
        else:
            path = save_demo_checkpoint(args.out, args.seed, config=PRESETS[args.preset], overwrite=args.overwrite)
    except (FileExistsError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if trained:
        note = " (--seed applies to --untrained only)" if "--seed" in (argv if argv is not None else sys.argv) else ""
        print(f"wrote {path} (TRAINED {args.preset} model, see codeenhance/weights/MODEL_CARD.md){note}")
    else:
        why = "" if args.untrained else f"; no trained {args.preset} checkpoint ships"
        print(f"wrote {path} (UNTRAINED demo checkpoint: random weights, seed {args.seed}, preset {args.preset}{why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
