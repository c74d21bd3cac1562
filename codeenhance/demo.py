"""python -m codeenhance.demo --out PATH: write the seeded, untrained demo checkpoint (official format)."""
from __future__ import annotations

import argparse
import sys

from .checkpoint import save_demo_checkpoint
from .config import PRESETS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m codeenhance.demo", description=__doc__)
    p.add_argument("--out", required=True, help="where to write the .pth file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=sorted(PRESETS), default="official", help="network size (default: official)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = p.parse_args(argv)
    try:
        path = save_demo_checkpoint(args.out, args.seed, config=PRESETS[args.preset], overwrite=args.overwrite)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} (UNTRAINED demo checkpoint: random weights, seed {args.seed}, preset {args.preset})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
