"""Image sizes as users type them: "256x256", "720x1280", "512" (square) or an alias such as "720p"."""
from __future__ import annotations

from .errors import InputError

# The largest side a size may have: beyond it a static profile, bucket or benchmark size only exhausts memory
# (images larger than a model's limit are run in tiles, which takes no size argument).
MAX_SIDE = 16384

# Named sizes are H x W, landscape, as video frames are.
SIZE_ALIASES = {"720p": (720, 1280), "1080p": (1080, 1920), "1440p": (1440, 2560), "4k": (2160, 3840)}


def parse_size(text: str) -> tuple[int, int]:
    """(H, W) from "HxW", "N" (N x N) or an alias; InputError (a ValueError) otherwise."""
    key = text.strip().lower().replace("*", "x")
    if key in SIZE_ALIASES:
        return SIZE_ALIASES[key]
    try:
        values = tuple(int(v) for v in key.split("x"))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise InputError(f"size {text!r} is not HxW (e.g. 256x256) or one of {', '.join(SIZE_ALIASES)}")
    if min(values) < 1:
        raise InputError(f"size {text!r} must be positive")
    if max(values) > MAX_SIDE:
        raise InputError(f"size {text!r} has a side above {MAX_SIDE}, the largest this toolkit plans for; larger "
                         "images are enhanced in tiles")
    return values


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """A comma list of sizes, in order, without repeats; InputError for a bad one or an empty list."""
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise InputError("the size list is empty")
    return list(dict.fromkeys(sizes))
