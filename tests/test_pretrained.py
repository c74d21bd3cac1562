"""The trained checkpoint that ships in the package: checked at load, written by the demo command, and it
enhances photos it never saw (the CC0 samples, darkened by the training degradation)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import codeenhance
from codeenhance import TINY, load_model
from codeenhance.checkpoint import CheckpointError
from codeenhance.degrade import STRENGTHS, degrade
from codeenhance.pretrained import SHIPPED, load_trained, trained_checkpoint
from contract.files import file_sha256
from contract.images import list_images, load_rgb

REPO = Path(__file__).resolve().parents[1]


def psnr(a, b):
    return float(10 * np.log10(1 / np.mean((a - b) ** 2)))


def test_the_tiny_checkpoint_ships_small_and_checked():
    path = trained_checkpoint("tiny")
    assert path.stat().st_size <= 16 * 2**20
    assert file_sha256(path) == SHIPPED["tiny"].sha256
    meta = torch.load(path, weights_only=True)["meta"]
    # Trained through the enhancement stage, with its training record; a run's interval checkpoint (not its end)
    # ships only with the reason it was chosen.
    assert meta["trained"] and meta["stage"] == 2 and meta["command"].startswith("python -m codeenhance.train")
    assert meta["complete"] or meta["selected"]
    assert len(meta["holdout"]) >= 10
    assert load_trained().config == TINY


def test_an_altered_checkpoint_is_refused(tmp_path, monkeypatch):
    data = bytearray(trained_checkpoint("tiny").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "altered.pth").write_bytes(bytes(data))
    monkeypatch.setitem(SHIPPED, "tiny", dataclasses.replace(SHIPPED["tiny"], file=str(tmp_path / "altered.pth")))
    with pytest.raises(CheckpointError, match="altered or corrupt"):
        load_trained()


@pytest.mark.parametrize("strength", list(STRENGTHS))
def test_trained_model_enhances_unseen_photos(strength):
    model = codeenhance.load_trained()
    gains, brightness = [], []
    for i, path in enumerate(list_images(REPO / "samples")):
        truth = load_rgb(path, 256)
        dark = degrade(truth, np.random.default_rng(100 + i), exposure=STRENGTHS[strength])
        x = torch.from_numpy(np.ascontiguousarray(dark.transpose(2, 0, 1)))[None]
        out = model.enhance(x)[0].clamp(0, 1).numpy().transpose(1, 2, 0)
        gains.append(psnr(out, truth) - psnr(dark, truth))
        brightness.append(out.mean() / truth.mean())
    assert min(gains) > 3.0, gains  # every photo comes out closer to the original than the dark input
    assert 0.75 < np.mean(brightness) < 1.25, brightness  # brightened to about the photo's level, not blown out


def test_demo_writes_the_trained_checkpoint_by_default(tmp_path):
    out = tmp_path / "demo.pth"
    r = subprocess.run([sys.executable, "-m", "codeenhance.demo", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "TRAINED tiny" in r.stdout
    assert out.read_bytes() == trained_checkpoint("tiny").read_bytes()


def test_demo_untrained_and_untrained_presets_say_so(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    r = subprocess.run([sys.executable, "-m", "codeenhance.demo", "--out", str(a), "--untrained", "--seed", "3"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "UNTRAINED" in r.stdout and "seed 3" in r.stdout
    assert load_model(a).config == TINY
    assert torch.load(a, weights_only=True)["meta"]["untrained"]
    r = subprocess.run([sys.executable, "-m", "codeenhance.demo", "--out", str(b), "--untrained", "--seed", "3"],
                       capture_output=True, text=True)
    assert a.read_bytes() != trained_checkpoint("tiny").read_bytes()
    wa, wb = (torch.load(p, weights_only=True)["params"] for p in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # seeded: the same random network again
