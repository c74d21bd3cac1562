"""python -m codeenhance.train on a handful of photos, in seconds: the checkpoint loads, the losses fall, a run is
reproducible for a seed, Ctrl-C saves and exits 130, --resume continues, bad photos are listed and skipped."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from codeenhance import TINY, load_model
from codeenhance.degrade import STRENGTHS, degrade
from tests.conftest import default_sigint

REPO = Path(__file__).resolve().parents[1]
FAST = ["--preset", "tiny", "--crop", "64", "--batch", "2", "--threads", "1", "--holdout", "0"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted((REPO / "samples").glob("*.jpg")):
        shutil.copy(path, folder / path.name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def train(photos, out, *extra, timeout=300):
    cmd = [sys.executable, "-m", "codeenhance.train", "--photos", str(photos), "--out", str(out), *FAST, *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def log_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_training_loads_lowers_losses_and_skips_bad_photos(photos, tmp_path):
    run = tmp_path / "run"
    r = train(photos, run, "--iters", "60,40", "--log-every", "10", "--warmup", "0.2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "broken.png" in r.stderr and "skipped" in r.stderr  # listed, and training went on without it
    lines = log_lines(run)
    for stage in (1, 2):
        l1 = [x["l1"] for x in lines if x["stage"] == stage]
        assert len(l1) >= 4 and min(l1[-2:]) < l1[0], (stage, l1)
    assert lines[-1]["stage"] == 2 and lines[-1]["step"] == 40
    model = load_model(run / "net_g_latest.pth")
    assert model.config == TINY
    meta = torch.load(run / "net_g_latest.pth", weights_only=True)["meta"]
    assert meta["trained"] and meta["complete"] and meta["command"].startswith("python -m codeenhance.train")
    assert load_model(run / "stage1.pth").config == TINY  # the stage-1 prior is a loadable checkpoint too
    out = model.enhance(torch.rand(1, 3, 40, 56))
    assert out.shape == (1, 3, 40, 56) and torch.isfinite(out).all()


def test_same_seed_same_weights_whatever_the_batch_workers(photos, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run, workers in ((a, "0"), (b, "2")):  # batches made in the loop, then ahead by two worker processes
        r = train(photos, run, "--iters", "4,3", "--warmup", "0.5", "--workers", workers)
        assert r.returncode == 0, r.stderr[-2000:]
    wa = torch.load(a / "net_g_latest.pth", weights_only=True)["params"]
    wb = torch.load(b / "net_g_latest.pth", weights_only=True)["params"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def own_group_default_sigint() -> None:
    os.setpgrp()
    default_sigint()


@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_saves_and_resume_continues(photos, tmp_path, workers):
    """With batch workers, Ctrl-C reaches the whole process group, as a terminal sends it: the workers must leave
    it to the training process, which saves the run."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "codeenhance.train", "--photos", str(photos), "--out", str(run), *FAST,
           "--iters", "1000000,5", "--log-every", "2", "--workers", workers]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=own_group_default_sigint)
    try:
        deadline = time.monotonic() + 120
        while not (run / "train_log.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (run / "train_log.jsonl").exists(), "training never logged a step"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert "--resume" in err
    state = torch.load(run / "training_state.pth", weights_only=True)["state"]
    stopped_at = state["step"]
    assert state["stage"] == 1 and stopped_at >= 2
    load_model(run / "net_g_latest.pth")  # what Ctrl-C saved is a usable checkpoint

    r = train(photos, run, "--iters", "1000000,5")  # no --resume: refuses to start over a run
    assert r.returncode == 2 and "--resume" in r.stderr
    r = train(photos, run, "--iters", f"{stopped_at + 3},4", "--resume", "--log-every", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [(x["stage"], x["step"]) for x in log_lines(run)]
    assert (1, stopped_at + 1) in steps and (1, stopped_at + 3) in steps and (2, 4) in steps
    assert steps.count((1, 2)) == 1  # continued, not restarted


@pytest.mark.parametrize("bad", [["--crop", "100"], ["--iters", "5"], ["--minutes", "nan"], ["--lr", "0"],
                                 ["--workers", "-1"]])
def test_bad_flags_exit_2(photos, tmp_path, bad):
    r = train(photos, tmp_path / "run", *(bad if "--iters" in bad or "--minutes" in bad else [*bad, "--iters", "1,1"]))
    assert r.returncode == 2 and "error" in r.stderr.lower()
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the refusal is for machines without it")
def test_cuda_without_a_gpu_exit_2(photos, tmp_path):
    r = train(photos, tmp_path / "run", "--iters", "1,1", "--device", "cuda")
    assert r.returncode == 2 and "--device cuda" in r.stderr and "--device cpu" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the lent GPU machine)")
def test_cuda_training_writes_a_checkpoint_that_loads_on_cpu(photos, tmp_path):
    run = tmp_path / "run"
    r = train(photos, run, "--iters", "6,4", "--warmup", "0.5", "--device", "cuda", "--workers", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    model = load_model(run / "net_g_latest.pth")  # on the CPU
    assert next(model.parameters()).device.type == "cpu"
    r = train(photos, run, "--iters", "6,6", "--device", "cuda", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert torch.load(run / "training_state.pth", weights_only=True, map_location="cpu")["state"]["step"] == 6


def test_photos_folder_without_images_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    r = train(tmp_path / "empty", tmp_path / "run", "--iters", "1,1")
    assert r.returncode == 2 and "no images" in r.stderr


def test_degradation_is_seeded_darker_and_in_range():
    rng = np.random.default_rng(0)
    photo = rng.uniform(0.2, 0.9, (32, 48, 3)).astype(np.float32)
    a = degrade(photo, np.random.default_rng(5))
    b = degrade(photo, np.random.default_rng(5))
    assert np.array_equal(a, b) and a.dtype == np.float32 and a.shape == photo.shape
    assert 0 <= a.min() and a.max() <= 1
    mild = degrade(photo, np.random.default_rng(1), exposure=STRENGTHS["mild"]).mean()
    severe = degrade(photo, np.random.default_rng(1), exposure=STRENGTHS["severe"]).mean()
    assert severe < mild < photo.mean()


def test_stage2_starts_from_a_given_prior_with_ift_at_identity(photos, tmp_path):
    first = tmp_path / "first"
    r = train(photos, first, "--iters", "6,0", "--warmup", "0.5")
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "second"
    r = train(photos, run, "--iters", "0,3", "--stage1", str(first / "stage1.pth"), "--log-every", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [(x["stage"], x["step"]) for x in log_lines(run)] == [(2, 1), (2, 2), (2, 3)]  # stage 1 skipped
    prior = torch.load(first / "stage1.pth", weights_only=True)["params"]
    assert all(torch.equal(prior[k], v) for k, v in torch.load(run / "stage1.pth", weights_only=True)["params"].items())

    r = train(photos, tmp_path / "third", "--iters", "0,3", "--stage1", str(run / "net_g_latest.pth"))
    assert r.returncode == 2 and "not a stage-1 prior" in r.stderr  # a stage-2 model is not a prior


def test_ift_identity_start_keeps_the_prior_decoder_output():
    from codeenhance.checkpoint import random_model
    from codeenhance.training import decode, encode, start_ift_at_identity

    model = random_model(TINY, seed=3).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        half, quarter, z = encode(model, x)
        without = decode(model, half, quarter, z, 0.0)
        scrambled = decode(model, half, quarter, z, 1.0)
        start_ift_at_identity(model)
        started = decode(model, half, quarter, z, 1.0)
    spread = without.abs().max()
    assert (scrambled - without).abs().max() > 0.05 * spread  # random IFT blocks change the output
    assert (started - without).abs().max() < 0.02 * spread  # at the identity they (almost) do not


@pytest.mark.parametrize("state", ["older", "truncated"])
def test_resume_refuses_a_state_it_cannot_read(photos, tmp_path, state):
    """A training state from an older version (it pickled a Path, which weights_only loading refuses) or a truncated
    one: exit 2 naming the file and what to do, not a crash reported as a bug."""
    run = tmp_path / "run"
    assert train(photos, run, "--iters", "2,0").returncode == 0
    path = run / "training_state.pth"
    if state == "older":
        saved = torch.load(path, weights_only=True)
        torch.save({**saved, "args": {"out": Path(run)}}, path)
    else:
        path.write_bytes(path.read_bytes()[:100])
    r = train(photos, run, "--iters", "4,0", "--resume")
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{path} cannot be read" in r.stderr and "--stage1" in r.stderr and "bug" not in r.stderr


def test_quality_splits_an_error_into_tone_and_detail():
    from benchmarks.quality import tone_and_detail_psnr

    rng = np.random.default_rng(0)
    truth = rng.uniform(0.2, 0.8, (96, 96, 3)).astype(np.float32)
    brighter = truth + 0.05  # a pure tone error: no detail error at all
    tone, detail = tone_and_detail_psnr(brighter, truth)
    assert abs(tone - 26.02) < 0.1 and detail > 60
    noisy = truth + rng.normal(0, 0.05, truth.shape).astype(np.float32)  # white noise: almost all detail
    tone, detail = tone_and_detail_psnr(noisy, truth)
    assert detail < 27 and tone > detail + 15


def test_quality_separates_judging_the_brightness_from_rendering_the_photo():
    from benchmarks.quality import brightness_fixed_psnr
    from export.fidelity import psnr

    rng = np.random.default_rng(0)
    truth = rng.uniform(0.1, 0.9, (64, 64, 3)).astype(np.float32)
    darker = truth * 0.7  # right photo, wrong brightness: the gain that fixes it is 1/0.7
    assert psnr(darker, truth) < 20 and brightness_fixed_psnr(darker, truth) > 60
    noisy = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1).astype(np.float32)  # right brightness, wrong detail
    assert abs(brightness_fixed_psnr(noisy, truth) - psnr(noisy, truth)) < 0.2


def test_training_ssim_is_the_ssim_of_the_reports():
    """Training's loss needs a differentiable SSIM (pytorch-msssim); every report uses export.fidelity.ssim
    (torch-free). They must be one definition: same window, sigma, constants and valid region."""
    import cv2
    from pytorch_msssim import ssim as loss_ssim

    from export.fidelity import ssim

    rng = np.random.default_rng(1)
    truth = cv2.GaussianBlur(rng.uniform(0, 1, (80, 120, 3)).astype(np.float32), (0, 0), 2)
    for noise in (0.01, 0.1):
        out = np.clip(truth + rng.normal(0, noise, truth.shape), 0, 1).astype(np.float32)
        as_t = lambda x: torch.from_numpy(x.transpose(2, 0, 1).copy())[None]  # noqa: E731
        assert abs(float(loss_ssim(as_t(out), as_t(truth), data_range=1.0)) - ssim(out, truth)) < 1e-4


def test_prepared_gpu_training_call_runs_end_to_end_on_the_cpu(tmp_path):
    """benchmarks/gpu_train.sh is run on a lent GPU, where device minutes are few: a flag it passes that the tools
    no longer take must fail here, not there. DEVICE=cpu runs the same commands with a budget of seconds."""
    data = tmp_path / "data"
    (data / "reference").mkdir(parents=True)
    (data / "lowlight").mkdir()
    samples = sorted((REPO / "samples").glob("*.jpg"))
    for i in range(12):  # 10 are held out, as the script's training does
        shutil.copy(samples[i % len(samples)], data / "reference" / f"photo{i:02d}.jpg")
    shutil.copy(samples[0], data / "lowlight" / "dark.jpg")
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "BATCH": "2", "WORKERS": "1", "GPU_DATA": str(data), "MAX_SIDE": "64",
           "PYTHON": sys.executable, "RUN": str(tmp_path / "run")}
    r = subprocess.run(["bash", "benchmarks/gpu_train.sh", "0.05,0.05", "tiny", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {"net_g_latest.pth", "train_log.jsonl", "quality.md", "train_progress.txt"} <= {f.name for f in out.iterdir()}
    load_model(out / "net_g_latest.pth")
    assert "trained network" in (out / "quality.md").read_text()
