"""The trained checkpoints shipped inside the package (codeenhance/weights/), each checked against its sha256.

Made by ``python -m codeenhance.train``; how, on what and how good: codeenhance/weights/MODEL_CARD.md.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from contract.files import file_sha256

from .checkpoint import CheckpointError, atomic_write, load_model

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ShippedCheckpoint:
    preset: str
    file: str
    sha256: str

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


#: preset -> its trained checkpoint. A preset not listed has no trained weights (the demo writes random ones).
SHIPPED: dict[str, ShippedCheckpoint] = {
    "tiny": ShippedCheckpoint("tiny", "codeenhance_tiny.pth", "72bf4e8ad665bd123698d52dc2ccad4349f2f5de664781e71db54dd09cc1888a"),
}


def trained_checkpoint(preset: str = "tiny") -> Path:
    """Path of the shipped trained checkpoint of ``preset``, after checking its sha256 (CheckpointError if it
    is missing or altered)."""
    if preset not in SHIPPED:
        raise CheckpointError(f"no trained checkpoint ships for preset {preset!r} (trained: {', '.join(SHIPPED) or 'none'})")
    entry = SHIPPED[preset]
    if not entry.path.is_file():
        raise CheckpointError(f"the trained {preset} checkpoint {entry.path} is missing: reinstall codeenhance-deploy")
    actual = file_sha256(entry.path)
    if actual != entry.sha256:
        raise CheckpointError(
            f"the trained {preset} checkpoint {entry.path} is altered or corrupt (sha256 {actual[:16]}..., expected "
            f"{entry.sha256[:16]}...): reinstall codeenhance-deploy or check out the file again"
        )
    return entry.path


def load_trained(preset: str = "tiny", *, device: str = "cpu"):
    """The shipped trained network of ``preset``, checked, in eval mode."""
    return load_model(trained_checkpoint(preset), device=device)


def write_trained_checkpoint(path: str | os.PathLike, preset: str = "tiny", *, overwrite: bool = False) -> Path:
    """Copy the checked trained checkpoint of ``preset`` to ``path`` (atomically)."""
    source = trained_checkpoint(preset)
    return atomic_write(path, lambda tmp: shutil.copyfile(source, tmp), overwrite)
