"""What every command shares: one argparse type per kind of value, the argument groups the tools compose (each flag
declared and validated here once), and the entry wrapper every ``main()`` runs under.

Types raise ``argparse.ArgumentTypeError``, so a bad value is a usage error (exit 2) that names the flag and says
why, before any work. Groups take the tool's own defaults and help where tools differ; the flag names, types and
checks are the same everywhere.

``run_main`` (``@run_main`` on a ``main(argv=None) -> int``): a ``ToolkitError`` prints ``error: message`` and returns
its exit code; Ctrl-C prints ``interrupted`` and returns 130 (outputs are written through ``AtomicOutput``, so no
partial file stays); any other exception is a bug: one line naming it and where it was raised, and where to report
it, plus the traceback with ``--debug``.
"""
from __future__ import annotations

import argparse
import functools
import math
import re
import sys
import traceback
from pathlib import Path

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, ToolkitError
from .graph import check_weight
from .sizes import parse_size, parse_sizes

REPORT_TO = "the codeenhance-deploy issue tracker"
DEBUG_FLAG = "--debug"
MAX_PORT = 65535


# --- one type per kind of value -------------------------------------------------------------------------------------

def _number(text: str, kind, what: str):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def int_in(low: int | None = None, high: int | None = None):
    """An argparse type for a whole number within [low, high] (either end may be open: None)."""

    def parse(text: str) -> int:
        value = _number(text, int, "a whole number")
        if low is not None and high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}..{high}, got {value}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    parse.__name__ = "whole number"  # argparse names the type in its "invalid ... value" message
    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)


def port(text: str) -> int:
    """A TCP port, 1..65535."""
    value = _number(text, int, "a port number")
    if not 1 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"port {value} is out of range: use 1..{MAX_PORT}")
    return value


def port_or_off(text: str) -> int:
    """A TCP port, or 0 for "off"."""
    value = _number(text, int, "a port number")
    return 0 if value == 0 else port(text)


def finite_float(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False):
    """An argparse type for a finite number within [low, high] (``low_open``/``high_open``: the end excluded;
    None: no bound). NaN and infinities are refused: they would turn a check off or overflow."""
    lo_text = "-inf" if low is None else f"{low:g}"
    hi_text = "inf" if high is None else f"{high:g}"
    span = f"{'(' if low_open or low is None else '['}{lo_text}, {hi_text}{')' if high_open or high is None else ']'}"

    def parse(text: str) -> float:
        value = _number(text, float, "a number")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            raise argparse.ArgumentTypeError(f"must be within {span}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


positive_float = finite_float(0, low_open=True)


def size(text: str) -> tuple[int, int]:
    """An image size, "HxW", "N" (square) or an alias such as 720p (contract.sizes)."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def sizes(text: str) -> list[tuple[int, int]]:
    """A comma list of sizes (contract.sizes), in order, without repeats."""
    try:
        return parse_sizes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _path_type(kind: str, problem):
    """An argparse type for a path; ``problem(text, path)`` says what is wrong with it, or None."""

    def parse(text: str) -> Path:
        path = Path(text)
        why = problem(text, path)
        if why:
            raise argparse.ArgumentTypeError(why)
        return path

    parse.__name__ = kind  # argparse names the type in its "invalid ... value" message
    return parse


def existing_file(kind: str = "file"):
    """An argparse type for a path that must name an existing file (``kind`` names it in the message)."""
    return _path_type(kind, lambda text, path: f"{kind} not found: {text}" if not path.exists() else
                      f"{text} is a folder; give the {kind} itself" if path.is_dir() else None)


def existing_dir(kind: str = "folder"):
    """An argparse type for a path that must name an existing folder."""
    return _path_type(kind, lambda text, path: None if path.is_dir() else
                      f"{kind} {text} is {'not a folder' if path.exists() else 'not found'}")


def file_path(kind: str = "file"):
    """An argparse type for a file that may not exist yet (read if present, written later): not a folder."""
    return _path_type(kind, lambda text, path: f"the {kind} path is empty" if not text.strip() else
                      f"{text} is a folder; name the {kind} itself (e.g. {path / 'trt.cache'})" if path.is_dir() else None)


VERSION = re.compile(r"^\d+(\.\d+){0,3}$")


def version(text: str) -> str:
    """A release number such as 10, 10.16 or 10.16.0.72."""
    if not VERSION.match(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number such as 10.16 or 10.16.0.72")
    return text.strip()


def output_path(text: str) -> Path:
    """Where a tool writes (a file or a folder, as the tool says); not empty. What may stand there (a folder, an
    existing file without ``--overwrite``) is the tool's check, which knows what it writes."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the output path is empty")
    return Path(text)


def weight(text: str) -> float:
    """An IFT weight (``--w-texture``, ``--w-style``): contract.graph's rule, a finite number in WEIGHT_RANGE."""
    try:
        return float(check_weight(float(text), "the weight"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# --- argument groups: each flag declared once -----------------------------------------------------------------------

class ToolkitParser(argparse.ArgumentParser):
    """argparse, plus the rule every tool shares: no output path (an argument of type ``output_path``) may name a
    file given as an input (any other argument naming an existing file), so no tool writes over its own input."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        outputs, inputs = [], []
        for action in self._actions:
            value = getattr(namespace, action.dest, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if isinstance(v, (str, Path)) and str(v):
                    (outputs if action.type is output_path else inputs).append((action, Path(v)))
        for out_action, out in outputs:
            if not out.is_file():
                continue
            for in_action, given in inputs:
                if given.is_file() and given.samefile(out):
                    self.error(f"{'/'.join(out_action.option_strings)} {out} is also the input "
                               f"{'/'.join(in_action.option_strings) or in_action.dest} {given}: a tool never writes "
                               f"over its own input; choose another {out_action.option_strings[-1]}")
        return namespace, extras


def parser(prog: str, description: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """A ToolkitParser with the shared ``--debug`` flag (read by ``run_main``)."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    p = ToolkitParser(prog=prog, description=description, **kwargs)
    add_debug(p)
    return p


def add_debug(p) -> None:
    p.add_argument(DEBUG_FLAG, action="store_true", help="on an unexpected error, print the traceback")


def add_output(p, *, help: str, flags: tuple[str, ...] = ("--out",), required: bool = True, default=None,
               overwrite_help: str | None = "replace an existing output", dest: str | None = None) -> None:
    """The output path (``--out`` unless ``flags`` says otherwise) and, unless ``overwrite_help`` is None,
    ``--overwrite``."""
    kwargs = {"dest": dest} if dest else {}
    p.add_argument(*flags, type=output_path, required=required, default=default, help=help, **kwargs)
    if overwrite_help is not None:
        add_overwrite(p, help=overwrite_help)


def add_overwrite(p, *, help: str = "replace an existing output") -> None:
    p.add_argument("--overwrite", action="store_true", help=help)


def add_threads(p, *, default: int | None = None, help: str | None = None) -> None:
    """``--threads``: CPU threads, a whole number >= 1."""
    if help is None:
        help = "CPU threads (>= 1)" + (f"; default {default}" if default is not None else "")
    p.add_argument("--threads", type=positive_int, default=default, help=help)


def add_device(p, *, help: str, choices=None, default: str | None = None) -> None:
    p.add_argument("--device", choices=choices, default=default, help=help)


def add_precision(p, *, help: str | None = None, choices=None, default: str | None = None) -> None:
    p.add_argument("--precision", choices=choices, default=default, help=help)


def add_sizes(p, *, help: str, default=None, flag: str = "--sizes", many: bool = True, parse: bool = True) -> None:
    """An image size flag: a comma list (``many``) or one HxW; both take aliases such as 720p. ``parse=False`` leaves
    the text to the tool (contract.sizes.parse_sizes), for a default that depends on other flags."""
    kind = (sizes if many else size) if parse else str
    p.add_argument(flag, type=kind, default=default, metavar="HxW[,HxW...]" if many else "HxW", help=help)


def add_calibration(p, *, count_default: int, size_default: int | None = 256, what: str = "",
                    folder: bool = True) -> None:
    """``--calib`` (a folder of photos; default synthetic low-light images; not with ``folder=False``),
    ``--calib-count`` (>= 1) and ``--calib-size`` (the longer side, >= 32; not with ``size_default=None``).
    ``what`` prefixes the help (e.g. "bf16: ")."""
    if folder:
        p.add_argument("--calib", type=Path,
                       help=f"{what}folder of calibration photos (default: synthetic low-light images)")
    p.add_argument("--calib-count", type=positive_int, default=count_default,
                   help=f"{what}calibration images (default {count_default})")
    if size_default is not None:
        p.add_argument("--calib-size", type=int_in(32), default=size_default,
                       help=f"{what}longer side of the calibration images, >= 32 (default {size_default})")


def add_checkpoint(p, *, help: str = "CodeEnhance generator checkpoint (BasicSR net_g .pth)", required: bool = True,
                   type=str, **kwargs) -> None:
    """``--ckpt``: the checkpoint; ``codeenhance.load_model`` checks it (one message per way it can be wrong)."""
    p.add_argument("--ckpt", required=required, type=type, help=help, **kwargs)


# --- the entry wrapper ----------------------------------------------------------------------------------------------

def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown place"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno} in {last.name}"


def report_bug(exc: BaseException, debug: bool) -> int:
    """One line for an unexpected exception (the traceback too with ``--debug``); the exit status."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    hint = "" if debug else f"; rerun with {DEBUG_FLAG} for the traceback"
    print(f"error: unexpected {type(exc).__name__}: {exc} (at {_where(exc)}). This is a bug in codeenhance-deploy: "
          f"please report it to {REPORT_TO} with the command line{hint}", file=sys.stderr)
    return EXIT_FAILED


def run_main(main):
    """Decorator for a command's ``main(argv=None) -> int``: the exit status of what it raises (see the module
    docstring). SystemExit (argparse's usage errors, ``--help``) passes through."""

    @functools.wraps(main)
    def wrapper(argv=None, *args, **kwargs):
        words = sys.argv[1:] if argv is None else [str(a) for a in argv]
        try:
            return main(argv, *args, **kwargs)
        except ToolkitError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:  # noqa: BLE001 (the point: no traceback for the user unless asked)
            return report_bug(e, DEBUG_FLAG in words)

    wrapper.wrapped_by_run_main = True
    return wrapper
