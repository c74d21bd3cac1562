"""Description of the machine and software a benchmark ran on, so that numbers can be compared honestly."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path

# Distribution names: onnxruntime-gpu and the tensorrt-cuXX wheels report under their own names.
PACKAGES = ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "onnxscript", "onnxslim", "numpy",
            "opencv-python-headless", "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "cuda-python", "matplotlib")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def gpu_names() -> list[str]:
    """GPU names from nvidia-smi (no CUDA context is created in the parent process)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def describe_machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "memory_gb": memory_total_gb(),
        "gpus": gpu_names(),
        "platform": platform.platform(),
        "versions": versions(),
        # Other work on a shared machine inflates latencies: the load average says how busy it was.
        "load_average_start": load_average(),
    }


def one_line(machine: dict) -> str:
    v = machine["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "tensorrt")
                     if k in v)
    gpu = "; GPU " + ", ".join(machine["gpus"]) if machine["gpus"] else "; no GPU"
    return f"{machine['cpu']} ({machine['cpus_usable']} usable of {machine['cpu_count']} CPUs){gpu}; " \
           f"Python {v['python']}, {libs}"
