"""python -m runtime INPUT... -o OUTDIR --model PATH: enhance image files, folders and globs.

Outputs are PNG (or the input's format with --keep-format), written atomically into OUTDIR under the input's
name. Existing outputs are kept unless --overwrite; an input file is never written over. Unreadable files are
skipped and listed at the end. Exit status: 0 all written, 1 some inputs failed or were skipped,
2 bad arguments, no inputs or a model that cannot be loaded.
"""
from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from codeenhance import CheckpointError
from codeenhance.files import write_bytes_atomically

from .backend import BackendError
from .enhancer import BACKENDS, DEFAULT_OVERLAP, Enhancer, backend_for

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
# Formats OpenCV writes 16-bit; for the others it saturates 16-bit values to 255, so we scale down first.
SIXTEEN_BIT_EXTENSIONS = {".png", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"}
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Errors that fail one image (its shape or type, or the backend refusing it) without stopping the run.
ENHANCE_ERRORS = (ValueError, TypeError, BackendError)
# Which command-line options each backend takes (as constructor keywords).
BACKEND_OPTIONS = {"torch": ("device", "precision", "threads"), "onnxruntime": ("providers", "threads"),
                   "tensorrt": ("device",)}


class ImageError(Exception):
    """A file that cannot be read or written as an image."""


@dataclass
class Job:
    source: Path
    target: Path


def collect_inputs(specs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, image files of folders (not recursive) and glob matches, in order, without repeats; plus the
    specs that matched nothing."""
    found, missing = [], []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(spec):
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        else:
            missing.append((spec, "not found"))
            continue
        if not matches:
            missing.append((spec, "no image files" if path.is_dir() else "matches no files"))
        found += matches
    unique = {p.resolve(): p for p in reversed(found)}  # first occurrence wins
    return [p for p in found if unique.get(p.resolve()) is p], missing


def plan_jobs(inputs: list[Path], outdir: Path, keep_format: bool, overwrite: bool):
    """Output path of each input, and the inputs refused before any work (reasons in words)."""
    jobs, refused, targets = [], [], {}
    sources = {p.resolve() for p in inputs}
    for source in inputs:
        target = outdir / (source.name if keep_format else source.stem + ".png")
        key = target.resolve()
        if key in sources:
            refused.append((str(source), f"output {target} would replace an input file; choose another -o"))
        elif key in targets:
            refused.append((str(source), f"output {target.name} is also the output of {targets[key]}; rename one"))
        elif target.exists() and not overwrite:
            refused.append((str(source), f"output {target} exists (pass --overwrite to replace it)"))
        else:
            targets[key] = source
            jobs.append(Job(source, target))
    return jobs, refused


def read_image(path: Path) -> np.ndarray:
    """Any-depth image with alpha, via imdecode so that non-ASCII names work on every platform."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageError(f"cannot read: {e.strerror or e}") from e
    if data.size == 0:
        raise ImageError("empty file")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError("not a readable image (corrupt, truncated or not an image file)")
    return image


def encode_image(image: np.ndarray, extension: str) -> bytes:
    """Encode for ``extension``, converting the depth where the format cannot hold the image's."""
    extension = extension.lower()
    if image.dtype == np.float32 and extension not in (".tif", ".tiff"):  # float TIFF in: 16-bit where possible
        scale = 65535 if extension in SIXTEEN_BIT_EXTENSIONS else 255
        image = np.rint(np.clip(image, 0, 1) * scale).astype(np.uint16 if scale == 65535 else np.uint8)
    if image.dtype == np.uint16 and extension not in SIXTEEN_BIT_EXTENSIONS:
        image = np.rint(image / 257.0).astype(np.uint8)
    try:
        ok, encoded = cv2.imencode(extension, image)
    except cv2.error as e:
        raise ImageError(f"cannot encode as {extension}: {str(e).strip().splitlines()[-1]}") from e
    if not ok:
        raise ImageError(f"cannot encode as {extension}")
    return encoded.tobytes()


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m runtime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("-o", "--outdir", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--model", required=True, type=Path, help=".pth/.pt, .onnx or .plan/.engine/.trt")
    p.add_argument("--backend", choices=sorted(BACKENDS), help="default: from the model's extension")
    p.add_argument("--device", help="torch: cpu, cuda, cuda:1; tensorrt: GPU index")
    p.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                   help="torch on CUDA: fp16 autocast (quantizer and IFT statistics stay fp32)")
    p.add_argument("--providers", help="onnxruntime: comma list of cpu, cuda, tensorrt, or auto (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch or onnxruntime")
    p.add_argument("--w-texture", type=float, default=1.0, help="texture weight (default 1.0)")
    p.add_argument("--w-style", type=float, default=1.0, help="style weight (default 1.0)")
    p.add_argument("--batch", type=int, default=1, help="same-size images per model call (default 1)")
    p.add_argument("--tile", type=int, help="tile images larger than this (0: never; default: only beyond the "
                                            "backend's limits or memory budget)")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help=f"tile overlap (default {DEFAULT_OVERLAP})")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--keep-format", action="store_true", help="write the input's format instead of PNG")
    return p.parse_args(argv)


def backend_options(args, backend: str) -> dict:
    given = {k: getattr(args, k) for k in ("device", "precision", "providers", "threads") if getattr(args, k)}
    unused = sorted(set(given) - set(BACKEND_OPTIONS[backend]))
    if unused:
        raise ValueError(f"--{', --'.join(unused)} do(es) not apply to the {backend} backend")
    if backend == "tensorrt" and "device" in given:
        given["device"] = int(given["device"].removeprefix("cuda:").removeprefix("cuda") or 0)
    return given


def enhance_jobs(enhancer: Enhancer, jobs: list[Job], args, failures: list) -> int:
    """Read, enhance and write, ``--batch`` files at a time; returns how many were written."""
    written = 0
    with tqdm(total=len(jobs), unit="img", desc="enhancing", file=sys.stderr) as bar:
        for start in range(0, len(jobs), args.batch):
            chunk, images = [], []
            for job in jobs[start:start + args.batch]:
                try:
                    images.append(read_image(job.source))
                    chunk.append(job)
                except ImageError as e:
                    failures.append((str(job.source), str(e)))
                    bar.update(1)
            try:
                outputs = enhancer.enhance_batch(images, args.w_texture, args.w_style)
            except ENHANCE_ERRORS:  # one odd image (e.g. two channels) fails the chunk: go one by one
                outputs = []
                for image in images:
                    try:
                        outputs.append(enhancer.enhance(image, args.w_texture, args.w_style))
                    except ENHANCE_ERRORS as e:
                        outputs.append(e)
            for job, output in zip(chunk, outputs):
                try:
                    if isinstance(output, Exception):
                        raise ImageError(f"cannot enhance: {output}")
                    write_bytes_atomically(job.target, encode_image(output, job.target.suffix))
                    written += 1
                except (ImageError, OSError) as e:
                    failures.append((str(job.source), str(e)))
                bar.update(1)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.batch < 1:
        print("error: --batch must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    inputs, failures = collect_inputs(args.inputs)
    if not inputs:
        listing = "; ".join(f"{spec}: {why}" for spec, why in failures)
        print(f"error: no input images ({listing})", file=sys.stderr)
        return EXIT_USAGE
    jobs, refused = plan_jobs(inputs, args.outdir, args.keep_format, args.overwrite)
    failures += refused
    written = 0
    if jobs:  # nothing to load when every input was refused
        try:
            backend = backend_for(args.model, args.backend)
            enhancer = Enhancer(args.model, backend, batch=args.batch, tile=args.tile, overlap=args.overlap,
                                **backend_options(args, backend))
        except (BackendError, CheckpointError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        with enhancer:
            info = enhancer.info
            print(f"{len(jobs)} image(s) -> {args.outdir} with {info.name} on {info.device} ({info.precision})",
                  file=sys.stderr)
            written = enhance_jobs(enhancer, jobs, args, failures)
    print(f"wrote {written} of {len(inputs)} image(s) to {args.outdir}")
    if failures:
        print(f"{len(failures)} problem(s):", file=sys.stderr)
        for source, reason in failures:
            print(f"  {source}: {reason}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
