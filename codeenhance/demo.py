"""python -m codeenhance.demo --out PATH: write the embedded default checkpoint (official BasicSR format).

By default the trained checkpoint of --preset (tiny) that ships in the package (codeenhance/weights/MODEL_CARD.md);
--untrained, or a preset without trained weights, writes a seeded random network instead (for stress tests).
"""
from __future__ import annotations

import sys

from contract import cli as common
from contract.errors import InputError

from .checkpoint import save_demo_checkpoint
from .config import PRESETS
from .pretrained import SHIPPED, write_trained_checkpoint

DEFAULT_PRESET = "tiny"


@common.run_main
def main(argv: list[str] | None = None) -> int:
    p = common.parser("python -m codeenhance.demo", __doc__)
    common.add_output(p, help="where to write the .pth file", overwrite_help="replace an existing file")
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help=f"network size (default: {DEFAULT_PRESET}; trained weights ship for: {', '.join(SHIPPED) or 'none'})")
    p.add_argument("--untrained", action="store_true", help="write the seeded random network even where trained weights ship")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (untrained checkpoints only)")
    args = p.parse_args(argv)
    trained = not args.untrained and args.preset in SHIPPED
    try:
        if trained:
            path = write_trained_checkpoint(args.out, args.preset, overwrite=args.overwrite)
        else:
            path = save_demo_checkpoint(args.out, args.seed, config=PRESETS[args.preset], overwrite=args.overwrite)
    except FileExistsError as e:
        raise InputError(str(e)) from e
    if trained:
        note = " (--seed applies to --untrained only)" if "--seed" in (argv if argv is not None else sys.argv) else ""
        print(f"wrote {path} (TRAINED {args.preset} model, see codeenhance/weights/MODEL_CARD.md){note}")
    else:
        why = "" if args.untrained else f"; no trained {args.preset} checkpoint ships"
        print(f"wrote {path} (UNTRAINED demo checkpoint: random weights, seed {args.seed}, preset {args.preset}{why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
