"""python -m codeenhance.train --photos DIR --out RUN: train CodeEnhance from normal-light photos (two stages).

Low-light inputs are made from the photos by codeenhance.degrade. Stage 1 learns the codebook (a VQ autoencoder
of the photos), stage 2 the enhancement (see codeenhance/training.py). Schedules follow time (--minutes) or
steps (--iters, bit-for-bit reproducible on the CPU for a seed and thread count). --device cuda trains on a GPU,
with --workers processes making the batches ahead. RUN/ gets net_g_latest.pth (official
BasicSR format: load_model reads it) and training_state.pth at every --save-every interval, written atomically,
stage1.pth when stage 1 ends, and train_log.jsonl. Ctrl-C saves and exits 130; --resume continues.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import torch

from contract.graph import PAD_MULTIPLE
from contract import cli as common
from contract.errors import EXIT_INTERRUPTED, EXIT_USAGE, BadArtifactError, InputError, ToolkitError

from .batches import StepBatches, load_photos, quiet_worker
from .checkpoint import atomic_torch_save, from_official_name, official_state_dict, random_model, read_state_dict
from .config import PRESETS
from .network import CodeEnhance
from .training import (LossWeights, encode, flat, kmeans, restart_dead_codes, stage1_step, stage2_step,
                       start_ift_at_identity)

RESTART_EVERY = 100  # stage-1 steps between dead-code restarts (and the usage window)
KMEANS_BATCHES = 6


@dataclass
class RunState:
    """What --resume needs beside the weights."""

    stage: int = 1
    step: int = 0
    elapsed: float = 0.0  # seconds spent in this stage
    kmeans_done: bool = False
    usage: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # the logged loss averages


class Trainer:
    def __init__(self, args, images, holdout, run: Path):
        self.args, self.holdout, self.run = args, holdout, run
        self.config = PRESETS[args.preset]
        self.weights = LossWeights()
        self.stop_requested = False
        self.batch_source = StepBatches(images, args.seed, args.batch, args.crop)
        self.device = torch.device(args.device)
        self.model = random_model(self.config, args.seed).to(self.device)
        self.state = RunState(usage=[0] * self.config.codebook_size)
        self.teacher: CodeEnhance | None = None
        saved_optimizer = self.resume() if args.resume else None
        self.optimizer = self.make_optimizer()
        if saved_optimizer is not None:
            self.optimizer.load_state_dict(saved_optimizer)
        elif args.stage1:
            self.load_weights(self.model, run / "stage1.pth")
            self.begin_stage2(history=[])

    def begin_stage2(self, history: list[dict]) -> None:
        """From the stage-1 prior in RUN/stage1.pth (the model holds its weights): the frozen teacher, IFT blocks
        at the identity, a fresh optimizer."""
        self.teacher = self.frozen_copy_of(self.run / "stage1.pth")
        self.state = RunState(stage=2, history=history, kmeans_done=True)
        start_ift_at_identity(self.model)
        self.optimizer = self.make_optimizer()

    # ------------------------------------------------------------------ set-up
    def resume(self) -> dict | None:
        """Load the run's state and weights (and the stage-1 teacher in stage 2); returns the optimizer state."""
        path = self.run / "training_state.pth"
        if not path.exists():
            raise InputError(f"--resume: {path} not found; start a new run without --resume")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)  # the optimizer moves its state to the params
            self.state, optimizer = RunState(**saved["state"]), saved["optimizer"]
        except Exception as e:  # unpickling (an older run's state), a truncated file, missing or unknown fields
            raise BadArtifactError(
                f"--resume: {path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:160]}): it is damaged "
                "or was written by an older version of this command; start a new run in another --out, or keep "
                f"this run's prior with --stage1 {self.run / 'stage1.pth'}") from None
        self.load_weights(self.model, self.run / "net_g_latest.pth")
        if self.state.stage == 2:
            self.teacher = self.frozen_copy_of(self.run / "stage1.pth")
        return optimizer

    @staticmethod
    def load_weights(model: CodeEnhance, path: Path) -> None:
        model.load_state_dict({from_official_name(k): v for k, v in read_state_dict(path).items()})

    def frozen_copy_of(self, path: Path) -> CodeEnhance:
        teacher = random_model(self.config, self.args.seed).to(self.device)
        self.load_weights(teacher, path)
        return teacher.eval().requires_grad_(False)

    def make_optimizer(self) -> torch.optim.Optimizer:
        frozen = ("semantic_backbone.",) + (("quantizer.shift_codebook",) if self.state.stage == 1 else ("quantizer.embedding.",))
        params = []
        for name, p in self.model.named_parameters():
            p.requires_grad_(not name.startswith(frozen))
            if p.requires_grad:
                params.append(p)
        return torch.optim.Adam(params, lr=self.args.lr, betas=(0.9, 0.99))

    # ------------------------------------------------------------------ schedule
    def budget(self) -> tuple[str, float]:
        a, i = self.args, self.state.stage - 1
        return ("iters", float(a.iters[i])) if a.iters else ("seconds", 60.0 * a.stage_minutes[i])

    def progress(self) -> float:
        kind, total = self.budget()
        done = self.state.step if kind == "iters" else self.state.elapsed
        return min(1.0, done / total) if total > 0 else 1.0

    def learning_rate(self) -> float:
        warm = min(1.0, (self.state.step + 1) / 50)
        return self.args.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * self.progress())))

    # ------------------------------------------------------------------ steps
    def generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.state.stage * 10_007 + self.state.step * 7 + salt)

    def batches(self):
        """The stage's batches from the current step on, made ahead by --workers processes (in order)."""
        from itertools import count

        a, stage = self.args, self.state.stage
        return iter(torch.utils.data.DataLoader(
            self.batch_source, batch_size=None,
            sampler=((stage, step) for step in count(self.state.step)), num_workers=a.workers,
            worker_init_fn=quiet_worker if a.workers else None, prefetch_factor=4 if a.workers else None,
            pin_memory=self.device.type == "cuda"))

    def init_codebook(self) -> None:
        with torch.no_grad():
            feats = []
            for salt in range(KMEANS_BATCHES):
                hq, _ = self.batch_source[(0, salt)]  # "stage 0": photos only, apart from every training batch
                feats.append(flat(encode(self.model, hq.to(self.device))[2]))
            centers = kmeans(torch.cat(feats), self.config.codebook_size, 20, self.generator(1))
            self.model.quantizer.embedding.weight.copy_(centers - self.model.quantizer.shift_codebook)
        self.state.kmeans_done = True

    def step(self, hq: torch.Tensor, lq: torch.Tensor | None) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        hq = hq.to(self.device, non_blocking=True)
        lq = None if lq is None else lq.to(self.device, non_blocking=True)
        stats = {}
        if self.state.stage == 1:
            quantize = self.progress() >= self.args.warmup
            if quantize and not self.state.kmeans_done:
                self.init_codebook()
            losses, codes, features = stage1_step(self.model, hq, self.weights, quantize)
            if codes is not None:
                usage = torch.tensor(self.state.usage) + torch.bincount(codes, minlength=self.config.codebook_size).cpu()
                self.state.usage = usage.tolist()
                stats["codes_used"] = int((usage > 0).sum())
        else:
            losses, agreement = stage2_step(self.model, self.teacher, lq, hq, self.weights)
            stats["code_match"] = float(agreement)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.state.step += 1
        if self.state.stage == 1 and self.state.kmeans_done and self.state.step % RESTART_EVERY == 0:
            if self.progress() < 0.8:  # let the codebook settle at the end
                stats["restarted"] = restart_dead_codes(self.model.quantizer, torch.tensor(self.state.usage), features, self.generator(2))
            self.state.usage = [0] * self.config.codebook_size
        return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}, **stats}

    # ------------------------------------------------------------------ saving
    def meta(self, complete: bool) -> dict:
        a = self.args
        return {
            "trained": True, "complete": complete, "stage": self.state.stage, "step": self.state.step,
            "preset": a.preset, "config": self.config.to_dict(), "seed": a.seed, "holdout": self.holdout,
            "command": "python -m codeenhance.train " + " ".join(a.argv), "last_losses": self.state.history[-1:] or None,
        }

    def save(self, complete: bool = False) -> None:
        self.model.eval()
        atomic_torch_save({"params": official_state_dict(self.model), "meta": self.meta(complete)},
                          self.run / "net_g_latest.pth", overwrite=True)
        atomic_torch_save({"state": vars(self.state), "optimizer": self.optimizer.state_dict(), "args": vars(self.args)},
                          self.run / "training_state.pth", overwrite=True)
        self.model.train()
        self.model.semantic_backbone.eval()  # its BatchNorm statistics stay as they are (frozen branch)

    def log(self, averages: dict) -> None:
        line = {"stage": self.state.stage, "step": self.state.step, "elapsed_s": round(self.state.elapsed, 1),
                "lr": self.learning_rate(), **{k: round(v, 5) for k, v in averages.items()}}
        self.state.history.append(line)
        with open(self.run / "train_log.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    # ------------------------------------------------------------------ loop
    def run_stages(self) -> bool:
        """Train until both stages are done (True) or a stop was requested (False; state saved)."""
        from tqdm import tqdm

        self.model.train()
        self.model.semantic_backbone.eval()
        while self.state.stage <= 2:
            kind, total = self.budget()
            bar = tqdm(total=int(total), desc=f"stage {self.state.stage}/2", unit="it" if kind == "iters" else "s",
                       dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
            sums, count, last_save = {}, 0, time.monotonic()
            batches = self.batches()
            while self.progress() < 1.0 and not self.stop_requested:
                t0 = time.monotonic()
                result = self.step(*next(batches))
                self.state.elapsed += time.monotonic() - t0
                for k, v in result.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                bar.n = self.state.step if kind == "iters" else int(self.state.elapsed)
                bar.set_postfix({k: f"{v:.3g}" for k, v in result.items() if k in ("loss", "l1", "codes_used", "code_match")}, refresh=False)
                bar.refresh()
                if self.state.step % self.args.log_every == 0:
                    self.log({k: v / count for k, v in sums.items()})
                    sums, count = {}, 0
                if time.monotonic() - last_save >= 60 * self.args.save_every:
                    self.save()
                    last_save = time.monotonic()
            bar.close()
            del batches  # stops the stage's batch workers
            if self.stop_requested:
                self.save()
                return False
            if count:
                self.log({k: v / count for k, v in sums.items()})
            if self.state.stage == 1:
                self.save()
                atomic_torch_save({"params": official_state_dict(self.model), "meta": {**self.meta(True), "hq_prior": True}},
                                  self.run / "stage1.pth", overwrite=True)
                self.begin_stage2(history=self.state.history)
            else:
                break
        self.save(complete=True)
        return True


def parse_args(argv: list[str]):
    p = common.parser("python -m codeenhance.train", __doc__)
    p.add_argument("--photos", required=True, help="folder of normal-light photos (searched recursively)")
    common.add_output(p, help="run folder (checkpoints, state, log)", overwrite_help=None)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="total wall-clock budget, split between the stages by --stage1-share")
    budget.add_argument("--stage-minutes", type=str, help="S1,S2: minutes per stage")
    budget.add_argument("--iters", type=str, help="N1,N2: steps per stage (reproducible for a seed and --threads)")
    p.add_argument("--stage1-share", type=float, default=0.35, help="share of --minutes for stage 1 (default 0.35)")
    p.add_argument("--crop", type=int, default=128, help=f"training crop side, a multiple of {PAD_MULTIPLE} (default 128)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=float, default=0.1, help="share of stage 1 trained without quantization before k-means")
    p.add_argument("--holdout", type=int, default=10, help="photos kept out for evaluation, spread over the sorted names")
    p.add_argument("--seed", type=int, default=0)
    common.add_threads(p, default=torch.get_num_threads())
    common.add_device(p, choices=("cpu", "cuda"), default="cpu", help="where the network trains (default cpu). "
                      "On cpu a run is bit-for-bit reproducible for a seed and --threads; on cuda it is not (atomic "
                      "adds in some backward kernels), and TF32 matmuls are on")
    p.add_argument("--workers", type=common.non_negative_int, default=0, help="processes that make batches ahead of the training step "
                   "(default 0: the training process makes them); a GPU run wants several. Batches are the same "
                   "whatever the number")
    p.add_argument("--save-every", type=float, default=5.0, help="minutes between checkpoints (default 5)")
    p.add_argument("--log-every", type=int, default=25, help="steps between train_log.jsonl lines (default 25)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--stage1", metavar="PRIOR", help="skip stage 1: start stage 2 from this stage-1 prior (a run's "
                   "stage1.pth of the same --preset; copied into --out)")
    args = p.parse_args(argv)
    args.out = str(args.out)  # the saved training state holds the args: plain values load with weights_only=True
    args.argv = list(argv)

    def pair(text, flag, kind):
        try:
            a, b = (kind(v) for v in text.split(","))
        except ValueError:
            p.error(f"{flag} takes two numbers, stage 1 and stage 2, e.g. 10,20; got {text!r}")
        if not (a >= 0 and b >= 0 and math.isfinite(a + b)):
            p.error(f"{flag} values must be finite and >= 0; got {text!r}")
        return a, b

    args.iters = pair(args.iters, "--iters", int) if args.iters else None
    if args.stage_minutes:
        args.stage_minutes = pair(args.stage_minutes, "--stage-minutes", float)
    elif args.minutes is not None:
        if not (math.isfinite(args.minutes) and args.minutes > 0):
            p.error(f"--minutes must be a positive number; got {args.minutes}")
        if not 0 < args.stage1_share < 1:
            p.error(f"--stage1-share must be between 0 and 1; got {args.stage1_share}")
        share = 0.0 if args.stage1 else args.stage1_share  # a given prior: the whole budget is stage 2's
        args.stage_minutes = (args.minutes * share, args.minutes * (1 - share))
    for flag, value, ok in (("--crop", args.crop, args.crop >= PAD_MULTIPLE and args.crop % PAD_MULTIPLE == 0),
                            ("--batch", args.batch, args.batch >= 1),
                            ("--lr", args.lr, 0 < args.lr < 1), ("--warmup", args.warmup, 0 <= args.warmup < 1),
                            ("--save-every", args.save_every, args.save_every > 0), ("--log-every", args.log_every, args.log_every >= 1), ("--holdout", args.holdout, args.holdout >= 0)):
        if not ok:
            p.error(f"{flag} {value} is out of range (see --help)")
    return args


def copy_stage1_prior(source: Path, target: Path, preset: str) -> None:
    """Check that ``source`` is a complete stage-1 prior of ``preset`` and copy it to the run's stage1.pth."""
    if not source.is_file():
        raise InputError(f"--stage1 {source}: no such file; give a run's stage1.pth")
    try:
        meta = torch.load(source, map_location="cpu", weights_only=True).get("meta") or {}
    except Exception as e:  # a truncated or foreign file
        raise InputError(f"--stage1 {source}: not a checkpoint torch can read ({type(e).__name__})") from None
    if not meta.get("hq_prior") or meta.get("preset") != preset:
        raise InputError(f"--stage1 {source}: not a stage-1 prior of preset {preset!r} (meta: hq_prior="
                         f"{meta.get('hq_prior')}, preset={meta.get('preset')}); give a stage1.pth of a run of that preset")
    if source.resolve() != target.resolve():
        atomic_torch_save(torch.load(source, map_location="cpu", weights_only=True), target, overwrite=True)


@common.run_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    run = Path(args.out)
    try:
        if args.device == "cuda":
            if not torch.cuda.is_available():
                raise InputError(f"--device cuda: this torch ({torch.__version__}) sees no usable CUDA GPU; train "
                                 "with --device cpu, or on a machine with a GPU and a CUDA build of torch")
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        else:
            torch.use_deterministic_algorithms(True)
        if run.exists() and not run.is_dir():
            raise InputError(f"--out {run} is a file; give a folder for the run")
        if not args.resume and (run / "training_state.pth").exists():
            raise InputError(f"--out {run} already holds a run; pass --resume to continue it or choose another folder")
        images, holdout, skipped = load_photos(args.photos, args.holdout, args.crop)
        for message in skipped:
            print(f"skipped: {message}", file=sys.stderr)
        print(f"training on {len(images)} photos from {args.photos} ({len(holdout)} held out, {len(skipped)} unreadable)",
              file=sys.stderr)
        run.mkdir(parents=True, exist_ok=True)
        if args.stage1 and not args.resume:
            copy_stage1_prior(Path(args.stage1), run / "stage1.pth", args.preset)
        trainer = Trainer(args, images, holdout, run)
    except ToolkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    def request_stop(signum, frame):
        if trainer.stop_requested:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        trainer.stop_requested = True
        print("\nstopping after this step: saving the run (Ctrl-C again to stop at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        finished = trainer.run_stages()
    except KeyboardInterrupt:
        print("interrupted before the run was saved; the last interval checkpoint is in place", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, previous)
    where = run / "net_g_latest.pth"
    if not finished:
        print(f"interrupted: saved stage {trainer.state.stage} step {trainer.state.step} to {where}; "
              f"continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"done: {where} (stage 1 prior: {run / 'stage1.pth'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
