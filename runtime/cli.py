"""python -m runtime INPUT... -o OUTDIR --model PATH: enhance image files, folders and globs.

Outputs are PNG (or the input's format with --keep-format), written atomically into OUTDIR under the input's
name. Existing outputs are kept unless --overwrite; an input file is never written over. Unreadable files are
skipped and listed at the end, and so is every folder entry that is not enhanced. Exit status: 0 all written,
1 some inputs failed or were skipped, 2 bad arguments, no inputs or a model that cannot be loaded,
130 interrupted (after a summary of what was written).
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from contract import cli as common
from contract.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, InputError, ToolkitError  # noqa: F401
from contract.files import write_bytes_atomically
from contract.images import ImageError, encode_image, is_image_path, read_image

from .enhancer import DEFAULT_OVERLAP, ClippedInputWarning, Enhancer
from .options import Flag, flags_of
from .registry import BACKENDS, choose_backend, is_url

EXIT_FAILED = EXIT_PARTIAL  # the name the tests and users of this module know


def backend_flags() -> dict[str, tuple[Flag, list[str], list]]:
    """option name -> (its Flag, each backend's help, the union of choices), over every backend's dataclass: a flag
    several backends share is declared once."""
    merged: dict[str, tuple[Flag, list[str], list]] = {}
    for spec in BACKENDS.values():
        for name, flag in flags_of(spec.options_class).items():
            first, helps, choices = merged.setdefault(name, (flag, [], []))
            if (flag.name, flag.type, flag.action) != (first.name, first.type, first.action):
                raise TypeError(f"option {name}: {spec.name} declares it unlike the other backends ({flag} vs {first})")
            helps.append(flag.help)
            choices += [c for c in flag.choices or () if c not in choices]
    return merged


# The command-line flag of each backend option, for messages.
OPTION_FLAGS = {name: flag.name for name, (flag, _, _) in backend_flags().items()}
OPTION_FLAGS["precision"] += "/--fp16"
PRECISIONS = sorted({p for spec in BACKENDS.values() for p in spec.precisions})


def add_backend_options(p) -> None:
    """The flags of every backend option (runtime.options), each declared once."""
    for name, (flag, helps, choices) in backend_flags().items():
        text = "; ".join(helps)
        if name == "threads":
            common.add_threads(p, help=text)
        elif name == "device":
            common.add_device(p, help=text)
        elif name == "precision":
            common.add_precision(p, choices=choices, help=text + ". The FP32 islands (nearest-code search, normalisation "
                                 "statistics) stay fp32; an .onnx graph's or an engine's precision is its own")
        elif flag.action:
            p.add_argument(flag.name, dest=name, action=flag.action, help=text)
        else:
            p.add_argument(flag.name, dest=name, type=flag.type, choices=choices or None, help=text)


@dataclass
class Job:
    source: Path
    target: Path


@dataclass
class Run:
    """What happened so far; printed at the end, also after Ctrl-C."""

    inputs: int = 0
    written: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, reason): make the exit status 1
    skipped: list[tuple[str, str]] = field(default_factory=list)  # folder entries that are not images
    notes: list[tuple[str, str]] = field(default_factory=list)  # written, with something worth knowing


def link_problem(path: Path) -> str | None:
    """Why a symbolic link cannot be followed, or None."""
    try:
        os.stat(path)
    except OSError as e:
        return "symbolic link loop" if e.errno == errno.ELOOP else f"broken symbolic link (target {os.readlink(path)} missing)"
    return None


def folder_entries(folder: Path, run: Run) -> list[Path]:
    """The image files of a folder (not recursive); every other entry is listed with the reason it is left out."""
    images = []
    for entry in sorted(folder.iterdir()):
        problem = link_problem(entry) if entry.is_symlink() else None
        if problem:
            (run.problems if is_image_path(entry) else run.skipped).append((str(entry), problem))
        elif entry.is_dir():
            run.skipped.append((str(entry), f"a folder (not searched; name it, or use a glob like '{entry}/**/*')"))
        elif not is_image_path(entry):
            run.skipped.append((str(entry), f"not an image file suffix ({entry.suffix or 'none'})"))
        else:
            images.append(entry)
    return images


def collect_inputs(specs: list[str], run: Run) -> list[Path]:
    """Files, image files of folders and glob matches, in order, without repeats. Specs that match nothing are
    problems; folder entries left out are listed in ``run.skipped``."""
    found = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = folder_entries(path, run)
        elif path.is_file():
            matches = [path]
        elif path.is_symlink():
            run.problems.append((spec, link_problem(path) or "not a file"))
            continue
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        else:
            run.problems.append((spec, "not found"))
            continue
        if not matches:
            run.problems.append((spec, "no image files" if path.is_dir() else "matches no files"))
        found += matches
    unique = {p.resolve(): p for p in reversed(found)}  # first occurrence wins
    return [p for p in found if unique.get(p.resolve()) is p]


def plan_jobs(inputs: list[Path], outdir: Path, keep_format: bool, overwrite: bool, run: Run) -> list[Job]:
    """Output path of each input; inputs refused before any work go to ``run.problems``. Two inputs with the same
    output name (photo.jpg, photo.png) are both planned: the first that is written claims the name."""
    jobs = []
    sources = {p.resolve() for p in inputs}
    for source in inputs:
        target = outdir / (source.name if keep_format else source.stem + ".png")
        if target.resolve() in sources:
            run.problems.append((str(source), f"output {target} would replace an input file; choose another -o"))
        elif target.exists() and not overwrite:
            run.problems.append((str(source), f"output {target} exists (pass --overwrite to replace it)"))
        else:
            jobs.append(Job(source, target))
    return jobs


def parse_args(argv):
    p = common.parser("python -m runtime", __doc__)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    common.add_output(p, flags=("-o", "--outdir"), help="output folder (created if missing)", overwrite_help=None)
    p.add_argument("--model", required=True,
                   help=", ".join(f"{'/'.join(s.suffixes + s.schemes)} ({s.name})" for s in BACKENDS.values()))
    p.add_argument("--backend", choices=sorted(BACKENDS), help="default: from the model's suffix")
    add_backend_options(p)
    p.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="the same as --precision fp16")
    p.add_argument("--w-texture", type=common.weight, default=1.0, help="texture weight, 0..4 (default 1.0)")
    p.add_argument("--w-style", type=common.weight, default=1.0, help="style weight, 0..4 (default 1.0)")
    p.add_argument("--batch", type=common.positive_int, default=1, help="same-size images per model call (default 1)")
    p.add_argument("--tile", type=common.non_negative_int, help="tile images larger than this (0: never; default: only "
                                                                "beyond the backend's limits or memory budget)")
    p.add_argument("--overlap", type=common.non_negative_int, default=DEFAULT_OVERLAP, help=f"tile overlap (default {DEFAULT_OVERLAP})")
    common.add_overwrite(p, help="replace existing outputs")
    p.add_argument("--keep-format", action="store_true", help="write the input's format instead of PNG")
    return p.parse_args(argv)


def backend_options(args, backend: str) -> dict:
    given = {k: getattr(args, k) for k in OPTION_FLAGS if getattr(args, k)}
    unused = sorted(set(given) - set(BACKENDS[backend].options))
    precisions = BACKENDS[backend].precisions
    if "precision" in given and "precision" not in unused and given["precision"] not in precisions:
        raise InputError(f"--precision {given['precision']}: the {backend} backend takes {', '.join(precisions)}")
    if unused:
        flags = ", ".join(OPTION_FLAGS[k] for k in unused)
        takes = ", ".join(s.name for s in BACKENDS.values() if set(unused) <= set(s.options)) or "no backend here"
        hint = (" (the precision of an .onnx graph or an engine is fixed when it is made: python -m export.precision)"
                if "precision" in unused else "")
        raise InputError(f"{flags} do(es) not apply to the {backend} backend; it applies to: {takes}{hint}")
    return given


def check_outdir(outdir: Path) -> None:
    """A path that is a file, or lies below one, fails here, before anything is read or loaded."""
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"-o {outdir} is a file, not a folder; name a folder for the outputs")
    existing = next(p for p in (outdir, *outdir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"-o {outdir}: {existing} is a file, so no folder can be made below it")


def prepare_outdir(outdir: Path) -> None:
    """Create the output folder (once there is something to write), before the model loads."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"-o {outdir}: cannot create the output folder ({e.strerror or e})") from e
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise InputError(f"-o {outdir}: the output folder is not writable")


def describe_tiling(enhancer: Enhancer, image, source: Path, patches) -> str:
    """The note for an image run in tiles (``patches``: the Enhancer's plan for it), with why."""
    h, w = image.shape[:2]
    th, tw = patches[0].h, patches[0].w
    why = enhancer.tile_reason(h, w).replace("tile=", "--tile ")
    return f"{source.name}: {w}x{h} is enhanced in {len(patches)} tiles of {tw}x{th} ({why}); tiles only approximate " \
           "the whole-image result (the IFT statistics are global)"


def already_written(job: Job, claimed: dict[Path, Path]) -> str | None:
    """Why ``job`` may not write its output: another input of this run wrote it first; None if it may."""
    first = claimed.get(job.target.resolve())
    return None if first is None else f"output {job.target.name} was already written from {first}; rename one of them"


def enhance_jobs(enhancer: Enhancer, jobs: list[Job], args, run: Run) -> None:
    """Read, enhance and write, ``--batch`` files at a time, updating ``run`` as it goes."""
    claimed: dict[Path, Path] = {}  # output -> the input written there in this run
    with tqdm(total=len(jobs), unit="img", desc="enhancing", file=sys.stderr) as bar:
        for start in range(0, len(jobs), args.batch):
            chunk, images = [], []
            for job in jobs[start:start + args.batch]:
                if already_written(job, claimed):
                    run.problems.append((str(job.source), already_written(job, claimed)))
                    bar.update(1)
                    continue
                try:
                    images.append(read_image(job.source))
                    chunk.append(job)
                except ImageError as e:
                    run.problems.append((str(job.source), str(e)))
                    bar.update(1)
            outputs = enhance_chunk(enhancer, chunk, images, args, run)
            for job, output in zip(chunk, outputs):
                try:
                    if isinstance(output, Exception):
                        raise ImageError(f"cannot enhance: {output}")
                    if already_written(job, claimed):  # a same-named input earlier in this chunk
                        raise ImageError(already_written(job, claimed))
                    write_bytes_atomically(job.target, encode_image(output, job.target.suffix))
                    claimed[job.target.resolve()] = job.source
                    run.written += 1
                except (ImageError, OSError) as e:
                    run.problems.append((str(job.source), str(e)))
                bar.update(1)


def enhance_chunk(enhancer: Enhancer, chunk: list[Job], images: list, args, run: Run) -> list:
    """The enhanced images of one chunk (an exception in place of each that failed); progress per tile for tiled
    ones; warnings (clipped float values) become notes on the chunk's files."""
    if not images:
        return []
    with tqdm(unit="tile", desc="tiles", file=sys.stderr, leave=False, disable=None) as tiles, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ClippedInputWarning)

        def progress(done: int, total: int) -> None:
            if total > len(images):  # only tiled images have more patches than images
                tiles.total = total
                tiles.update(done - tiles.n)

        def on_tiles(index: int, patches) -> None:
            tqdm.write(describe_tiling(enhancer, images[index], chunk[index].source, patches), file=sys.stderr)

        # One odd image (e.g. float64) or a backend call that refuses it fails alone: its exception comes back.
        outputs = enhancer.enhance_batch(images, args.w_texture, args.w_style, progress=progress, on_tiles=on_tiles,
                                         errors="return")
    names = ", ".join(str(job.source) for job in chunk)
    run.notes += [(names, str(w.message)) for w in caught if issubclass(w.category, ClippedInputWarning)]
    return outputs


def report(run: Run, outdir: Path) -> None:
    print(f"wrote {run.written} of {run.inputs} image(s) to {outdir}")
    for title, rows in (("note(s)", run.notes), ("skipped folder entr(ies)", run.skipped), ("problem(s)", run.problems)):
        if rows:
            print(f"{len(rows)} {title}:", file=sys.stderr)
            for source, reason in rows:
                print(f"  {source}: {reason}", file=sys.stderr)


@common.run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run()
    if not is_url(args.model) and not Path(args.model).exists():
        raise InputError(f"model not found: {args.model}")
    spec = choose_backend(args.model, args.backend)
    options = backend_options(args, spec.name)
    check_outdir(args.outdir)
    inputs = collect_inputs(args.inputs, run)
    run.inputs = len(inputs)
    if not inputs:
        listing = "; ".join(f"{spec}: {why}" for spec, why in run.problems + run.skipped)
        raise InputError(f"no input images ({listing})")
    created = [p for p in (args.outdir, *args.outdir.absolute().parents) if not p.exists()]  # leaf first
    prepare_outdir(args.outdir)
    jobs = plan_jobs(inputs, args.outdir, args.keep_format, args.overwrite, run)
    if jobs:  # nothing to load when every input was refused
        try:
            enhancer = Enhancer(args.model, spec, batch=args.batch, tile=args.tile, overlap=args.overlap, **options)
        except (ToolkitError, ValueError, OSError) as e:  # a model that cannot be loaded: usage (2), whatever failed
            for folder in created:  # made for this run and still empty: not left behind
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise InputError(str(e)) from e
        with enhancer:
            info = enhancer.info
            print(f"{len(jobs)} image(s) -> {args.outdir} with {info.name} on {info.device} ({info.precision})",
                  file=sys.stderr)
            try:
                enhance_jobs(enhancer, jobs, args, run)
            except KeyboardInterrupt:
                report(run, args.outdir)
                print(f"interrupted: {run.written} written, the rest not written (no partial files)", file=sys.stderr)
                return EXIT_INTERRUPTED
    report(run, args.outdir)
    return EXIT_PARTIAL if run.problems else EXIT_OK
