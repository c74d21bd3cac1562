"""Measurement of one backend at one size, in a process of its own (``python benchmarks/latency.py --_worker JOB``).

A fresh process per measurement keeps the numbers apart: peak RSS is that of this process only, caches
and thread pools of one backend do not warm another, and a crash or out-of-memory kill costs one row, not the
run. The job is a JSON file written by the parent; the result is a JSON file plus an .npz with the outputs of
every benchmark image, which the parent compares with the reference (measurement and comparison are apart).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np

from contract.graph import INPUT_W_STYLE, INPUT_W_TEXTURE, OUTPUT_CODES, OUTPUT_ENHANCED


def peak_rss_mb() -> float:
    """Peak resident memory of this process image: VmHWM on Linux, else ru_maxrss.

    Not ru_maxrss on Linux: getrusage's maximum survives execve (man 2 getrusage), so a worker started by the
    parent (which holds torch and the exported graphs) would report the parent's peak, not its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    """getrusage(RUSAGE_SELF).ru_maxrss in MiB (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def make_backend(job: dict):
    """The runtime/ backend for the job, given the options its registry entry takes; create_backend imports only
    that runtime (ORT and OpenVINO workers never load torch)."""
    from runtime import create_backend
    from runtime.registry import BACKENDS

    wanted = {"device": job["device"], "precision": job["precision"], "threads": job["threads"],
              "providers": "cuda" if job["device"] == "cuda" else None}
    spec = BACKENDS[job["runtime"]]
    options = {k: v for k, v in wanted.items() if k in spec.options and v is not None}
    options.update(job.get("options", {}))  # the row's own (e.g. cuda_graphs)
    if job["runtime"] == "openvino":
        options["device"] = "CPU"
    return create_backend(job["artifact"], job["runtime"], **options)


class GpuMemory:
    """Peak GPU memory of this process: torch's allocator statistics for torch, otherwise NVML's per-process
    figure (ORT arenas and TensorRT keep what they allocated, so usage at the end is their peak), otherwise the
    device-wide used memory from cudart's mem info, as a difference from before loading."""

    def __init__(self, runtime: str, device: str):
        self.runtime, self.active = runtime, device == "cuda"
        self.baseline = self._device_used() if self.active and runtime != "torch" else None
        if self.active and runtime == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def report(self) -> dict | None:
        if not self.active:
            return None
        if self.runtime == "torch":
            import torch

            return {"peak_mb": torch.cuda.max_memory_allocated() / 2**20, "method": "torch.cuda.max_memory_allocated",
                    "reserved_mb": torch.cuda.max_memory_reserved() / 2**20}
        used = self._process_used()
        if used is not None:
            return {"peak_mb": used / 2**20, "method": "nvml process used memory at the end"}
        now = self._device_used()
        if now is not None and self.baseline is not None:
            return {"peak_mb": (now - self.baseline) / 2**20, "method": "cudaMemGetInfo used, end minus start"}
        return {"peak_mb": None, "method": "unavailable: install nvidia-ml-py or cuda-python"}

    @staticmethod
    def _process_used() -> int | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]))
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid():
                    return int(proc.usedGpuMemory)
        except Exception:  # no NVML, no permission (containers hide pids): fall back
            return None
        return None

    @staticmethod
    def _device_used() -> int | None:
        try:
            from contract.optional import import_cudart

            err, free, total = import_cudart().cudaMemGetInfo()
            return int(total - free) if int(err) == 0 else None
        except Exception:
            return None


def batch_plan(n_images: int, batch: int) -> list[np.ndarray]:
    """Index lists of the batches that cover every image once (the last batch wraps around to stay full)."""
    starts = range(0, n_images, batch)
    return [np.arange(s, s + batch) % n_images for s in starts]


def measure(job: dict) -> dict:
    images = np.load(job["inputs"])
    plan = batch_plan(len(images), job["batch"])
    feeds = [(np.ascontiguousarray(images[idx]), np.full(len(idx), job[INPUT_W_TEXTURE], np.float32),
              np.full(len(idx), job[INPUT_W_STYLE], np.float32)) for idx in plan]
    enhanced = np.zeros(images.shape, np.float32)
    codes, seen = None, set()

    def call(k: int) -> float:
        nonlocal codes
        image, wt, ws = feeds[k % len(feeds)]
        t0 = time.perf_counter()
        result = backend.infer(image, wt, ws)  # returns host arrays: device work is finished when it returns
        elapsed = time.perf_counter() - t0
        if k % len(feeds) not in seen:  # keep each image's first output for the fidelity comparison
            seen.add(k % len(feeds))
            idx = plan[k % len(feeds)]
            enhanced[idx] = result.enhanced
            if result.codes is not None:
                if codes is None:
                    codes = np.zeros((len(images), *result.codes.shape[1:]), result.codes.dtype)
                codes[idx] = result.codes
        return elapsed

    backend = make_backend(job)
    gpu = GpuMemory(job["runtime"], job["device"])
    baseline_rss = peak_rss_mb()  # interpreter plus the runtime's imports, before any model is loaded
    t0 = time.perf_counter()
    backend.load()
    load_s = time.perf_counter() - t0
    first_infer_s = call(0)
    for k in range(1, 1 + job["warmup"]):
        call(k)
    start = 1 + job["warmup"]
    latencies = [call(k) for k in range(start, start + job["iters"])]
    for k in range(len(feeds)):  # images that no timed call covered: run once, untimed
        if k not in seen:
            call(k)
    info = asdict(backend.describe())
    gpu_report = gpu.report()
    backend.close()
    arrays = {OUTPUT_ENHANCED: enhanced} if codes is None else {OUTPUT_ENHANCED: enhanced, OUTPUT_CODES: codes}
    np.savez(job["outputs"], **arrays)
    return {
        "status": "ok",
        "describe": info,
        "load_s": load_s,
        "first_infer_s": first_infer_s,
        "latencies_s": latencies,
        "has_codes": codes is not None,
        "memory": {"peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline_rss, "ru_maxrss_mb": ru_maxrss_mb(),
                   "gpu": gpu_report},
    }


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    try:
        result = measure(job)
    except Exception as e:  # reported as this row's error; the parent goes on with the other rows
        reason = " ".join(str(e).split())[:600] or "no message"
        result = {"status": "error", "reason": f"{type(e).__name__}: {reason}",
                  "traceback": traceback.format_exc()[-4000:]}
    Path(job["result"]).write_text(json.dumps(result, indent=1, default=str))
    return 0 if result["status"] == "ok" else 1
