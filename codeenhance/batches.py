"""The training photos and batches: which photos are held out, loading them, and the seeded batches of crops with
their low-light copies (codeenhance.degrade) that python -m codeenhance.train trains on."""
from __future__ import annotations

import signal

import cv2
import numpy as np
import torch

from contract.errors import InputError
from contract.images import ImageError, list_images, load_rgb

from .degrade import degrade


def holdout_names(names: list[str], count: int) -> list[str]:
    """``count`` names spread evenly over the sorted list: the photos kept out of training for evaluation."""
    if count <= 0 or not names:
        return []
    picks = np.linspace(0, len(names) - 1, min(count, len(names))).round().astype(int)
    return [sorted(names)[i] for i in sorted(set(picks))]


def load_photos(folder: str, holdout: int, crop: int) -> tuple[list[np.ndarray], list[str], list[str]]:
    """(training images, held-out names, skipped-file messages). Photos smaller than a crop are enlarged."""
    paths = list_images(folder)
    held = set(holdout_names([p.name for p in paths], holdout))
    images, skipped = [], []
    for path in paths:
        if path.name in held:
            continue
        try:
            rgb = load_rgb(path)
        except ImageError as e:
            skipped.append(str(e))
            continue
        short = min(rgb.shape[:2])
        if short < crop:
            scale = crop / short
            rgb = cv2.resize(rgb, (max(crop, round(rgb.shape[1] * scale)), max(crop, round(rgb.shape[0] * scale))),
                             interpolation=cv2.INTER_CUBIC).clip(0, 1)
        images.append(rgb)
    if not images:
        raise InputError(f"--photos {folder}: no usable training photo ({len(skipped)} unreadable, {len(held)} held out)")
    return images, sorted(held), skipped


def sample_batch(images, rng: np.random.Generator, batch: int, crop: int, dark: bool):
    """Random crops (half of them from a up-to-2x larger window, area-downscaled), flipped; + degraded copies."""
    hq, lq = [], []
    for _ in range(batch):
        img = images[int(rng.integers(len(images)))]
        h, w = img.shape[:2]
        size = min(h, w, int(crop * rng.uniform(1.0, 2.0))) if rng.uniform() < 0.5 else crop
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        patch = img[y:y + size, x:x + size]
        if size != crop:
            patch = cv2.resize(patch, (crop, crop), interpolation=cv2.INTER_AREA)
        if rng.uniform() < 0.5:
            patch = patch[:, ::-1]
        patch = np.ascontiguousarray(patch, dtype=np.float32)
        hq.append(patch)
        if dark:
            lq.append(degrade(patch, rng))
    to_t = lambda xs: torch.from_numpy(np.stack(xs).transpose(0, 3, 1, 2).copy())  # noqa: E731
    return to_t(hq), (to_t(lq) if dark else None)


class StepBatches(torch.utils.data.Dataset):
    """Batch number ``(stage, step)`` of a run: a pure function of the seed, so worker processes can make batches
    ahead of the training loop and a run stays the same whatever --workers is. Stage 2's batches carry low-light
    copies; stage 0 holds the k-means initialisation's batches."""

    def __init__(self, images, seed: int, batch: int, crop: int):
        self.images, self.seed, self.batch, self.crop = images, seed, batch, crop

    def __getitem__(self, key: tuple[int, int]):
        stage, step = key
        rng = np.random.default_rng([self.seed, stage, step])
        return sample_batch(self.images, rng, self.batch, self.crop, dark=stage == 2)


def quiet_worker(_: int) -> None:
    """A batch worker leaves Ctrl-C to the training process, which saves the run (a worker that took it would exit,
    and a step still waiting for its batch would fail); it uses one OpenCV thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
