"""The AOTInductor package backend: a ``.pt2`` written by ``python -m export.aoti``, run without the model's code.

The package's metadata (``contract.aoti_package``) is checked before any kernel is loaded: a package compiled for
another device kind, torch release, CPU instruction set or GPU architecture, or one without our metadata, is refused
with what to do. Each static bucket serves the inputs whose padded size is the bucket's (``bucket_for``); its
compiled model is loaded on first use (each holds its own copy of the weights). An input no bucket serves is
refused with the sizes the package has (or runs the dynamic program when the package has one).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from contract.aoti_package import (DYNAMIC_MIN_SIDE, DYNAMIC_MODEL, StalePackageError, bucket_for, check_package,
                                   describe_buckets, pad_multiple, padded_size)
from contract.errors import InputError
from contract.provenance import Provenance

from .backend import BackendBase, BackendError, BackendInfo, InferResult
from .options import AotiOptions

DEVICES = ("cpu", "cuda")


class AotiBackend(BackendBase):
    """``model``: the ``.pt2`` path. ``device``: "cpu", "cuda" or "cuda:N" (must be what the package was compiled
    for). ``checkpoint_sha256``: when given, a package compiled from another checkpoint is refused.
    ``threads`` sets torch's intra-op (OpenMP) thread count, which the CPU kernels use, when given."""

    name = "aoti"

    Options = AotiOptions

    def __init__(self, model: str | os.PathLike, **options):
        super().__init__(**options)
        device = self.device
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise BackendError(f"aoti: {device!r} is not a device; use cpu, cuda or cuda:N") from e
        if self.device.type not in DEVICES:
            raise BackendError(f"aoti: device must be cpu or cuda[:N], got {device!r}")
        self.path = Path(model)
        self.meta: dict | None = None
        self.models: dict[str, object] = {}

    # --- loading -------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.is_file():
            raise BackendError(f"aoti: package not found: {self.path}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"aoti: device {self.device} requested but this torch build has no usable CUDA "
                               f"(torch {torch.__version__}); use device='cpu' with a CPU package")
        cpu_capability = compute_capability = None
        if self.device.type == "cuda":
            compute_capability = "{}.{}".format(*torch.cuda.get_device_capability(self.device))
        else:
            cpu_capability = torch.backends.cpu.get_cpu_capability()
        try:
            self.meta = check_package(self.path, torch_version=torch.__version__, device=self.device.type,
                                      checkpoint_sha256=self.checkpoint_sha256, cpu_capability=cpu_capability,
                                      compute_capability=compute_capability)
        except StalePackageError as e:  # corrupt or stale: exit 2, rebuild it
            raise StalePackageError(f"aoti: {e}") from None
        if self.threads:
            torch.set_num_threads(self.threads)
        # Load the first model now, so a package that cannot be loaded fails here and not on the first image.
        self._model(next(iter(self.meta["models"])))

    def _model(self, name: str):
        if name not in self.models:
            from torch._inductor.package import load_package

            index = self.device.index if self.device.index is not None else -1
            try:
                self.models[name] = load_package(str(self.path), name, device_index=index)
            except Exception as e:  # torch raises RuntimeError/OSError from the loader (dlopen, missing files)
                raise BackendError(f"aoti: cannot load model {name!r} from {self.path}: {e}; rebuild it with "
                                   "`python -m export.aoti`") from e
        return self.models[name]

    # --- inference -----------------------------------------------------------------------------------------------
    def bucket(self, h: int, w: int) -> str:
        """The compiled model that runs an H x W input; InputError when the package has none for it."""
        self.load()
        name = bucket_for(self.meta, h, w)
        if name is None:
            m = pad_multiple(self.meta)
            raise InputError(
                f"aoti: no compiled size in {self.path.name} runs {h}x{w} (padded {padded_size(h, m)}x{padded_size(w, m)}); "
                f"it has {describe_buckets(self.meta)}. Rebuild with `python -m export.aoti --sizes {h}x{w},...` "
                "(or --dynamic), or tile the image")
        return name

    def _infer(self, images: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray) -> InferResult:
        n, _, h, w = images.shape
        name = self.bucket(h, w)
        model = self._model(name)
        dev = self.device
        wt = torch.from_numpy(w_texture).to(dev)
        ws = torch.from_numpy(w_style).to(dev)
        with torch.inference_mode():
            if name == DYNAMIC_MODEL:
                enhanced, codes = model(torch.from_numpy(images).to(dev), wt, ws)
            else:
                hp, wp = self.meta["models"][name]["padded"]
                canvas = np.zeros((n, 3, hp, wp), np.float32)  # only [:h, :w] is read by the program
                canvas[:, :, :h, :w] = images
                size = torch.tensor([h, w], dtype=torch.int64, device=dev)
                enhanced, codes = model(torch.from_numpy(canvas).to(dev), wt, ws, size)
                enhanced = enhanced[:, :, :h, :w]
        return InferResult(enhanced=np.ascontiguousarray(enhanced.cpu().numpy()), codes=codes.cpu().numpy())

    def _describe(self) -> BackendInfo:
        meta = self.meta
        record = Provenance.from_json(meta)
        device = str(self.device)
        if self.device.type == "cuda":
            device = f"{device} ({torch.cuda.get_device_name(self.device)})"
        static = [spec["padded"] for spec in meta["models"].values() if spec.get("padded")]
        dynamic = DYNAMIC_MODEL in meta["models"]
        # Largest input a bucket runs (the enhancer tiles above it); sizes in between without a bucket are refused.
        max_hw = None if dynamic else (max(hp for hp, _ in static) - 1, max(wp for _, wp in static) - 1)
        min_hw = (DYNAMIC_MIN_SIDE, DYNAMIC_MIN_SIDE) if dynamic and not static else (1, 1)
        return BackendInfo(
            name=self.name, device=device, precision=meta["precision"], min_hw=min_hw, max_hw=max_hw,
            larger="compile a package with a bucket for it (python -m export.aoti --sizes HxW, or --dynamic)",
            max_batch=None if dynamic and not static else int(meta.get("max_batch", 1)),
            extra={"package": str(self.path), "buckets": describe_buckets(meta), "torch": record.built_for.torch_version,
                   "checkpoint": record.checkpoint_sha256, "config": record.model_config},
        )

    def _close(self) -> None:
        self.models = {}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
