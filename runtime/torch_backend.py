"""The reference backend: the PyTorch CodeEnhance model, on CPU or CUDA, fp32 or fp16 autocast (CUDA only)."""
from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from codeenhance import CheckpointError, CodeEnhance, load_model
from codeenhance.islands import keep_fp32_islands, lean_fp16
from contract.graph import FP16, FP16_MIXED, FP32

from .backend import BackendBase, BackendError, BackendInfo, InferResult
from .options import TORCH_PRECISIONS as PRECISIONS, TorchOptions  # noqa: F401  (PRECISIONS: this module's name)
# How each fp16 precision keeps its FP32 islands (reported in describe().extra["fp16"]); both report fp16-mixed.
FP16_FORMS = {FP16: "autocast", "fp16-lean": "lean"}


class TorchBackend(BackendBase):
    """``model``: a checkpoint path (official format) or a CodeEnhance instance (not modified).

    ``precision="fp16"`` runs under CUDA autocast with the nearest-code search and the IFT statistics in fp32.
    ``"fp16-lean"`` runs fp16 weights without autocast, the same islands cast explicitly, and GroupNorm, LayerNorm
    and Softmax on fp16 tensors (fp32 accumulation inside the kernels) instead of autocast's fp32 copies
    (codeenhance.islands.lean_fp16); it also runs on CPU (for checking, not for speed).
    On CUDA, "fp32" is true fp32: torch runs cuDNN convolutions in TF32 by default, so the TF32 switches are set
    for each call (they are process-wide) and "tf32" is its own, labelled variant.
    ``threads`` sets torch's intra-op thread count (a process-wide setting) when given.
    ``cuda_graphs=True`` (CUDA only) captures the forward pass once per input shape into a CUDA graph and replays
    it: the model launches hundreds of small kernels, so small images in eager fp16 are bound by kernel launches
    (README, "AOTInductor packages", has what was measured). The captured graphs keep their input, output and
    activation buffers (one set per shape seen). Written for the GPU run of benchmarks/gpu_session.sh.
    """

    name = "torch"

    Options = TorchOptions

    def __init__(self, model: str | os.PathLike | CodeEnhance, **options):
        super().__init__(**options)
        device, precision, cuda_graphs = self.device, self.precision, self.cuda_graphs
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise BackendError(f"torch: {device!r} is not a device; use cpu, cuda or cuda:N") from e
        if precision in ("fp16", "tf32") and self.device.type != "cuda":
            raise BackendError(f"torch: {precision} needs a CUDA device, got {device!r}; use precision='fp32' on CPU")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"torch: device {device!r} requested but this torch build has no usable CUDA "
                               f"(torch {torch.__version__}); use device='cpu'")
        if cuda_graphs and self.device.type != "cuda":
            raise BackendError(f"torch: cuda_graphs needs a CUDA device, got {device!r}")
        self.source = model
        self.graphs: dict = {}  # (shape, dtype) -> (graph, static inputs, static outputs)
        self.model: CodeEnhance | None = None

    def _load(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        if isinstance(self.source, CodeEnhance):
            model = self.source
            # Moving or wrapping (fp16 islands) is done on a copy: the caller's model stays as it is.
            if next(model.parameters()).device != torch.empty(0, device=self.device).device or self.precision in FP16_FORMS:
                model = copy.deepcopy(model).to(self.device)
            model = model.eval()
        else:
            try:
                model = load_model(self.source, device=self.device)
            except CheckpointError as e:
                raise BackendError(f"torch: {e}") from e
        wrap = {"fp16": keep_fp32_islands, "fp16-lean": lean_fp16}.get(self.precision)
        self.model = wrap(model) if wrap else model

    def _autocast(self):
        if self.device.type == "cuda":
            tf32 = self.precision == "tf32"
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        if self.precision == "fp16":
            # A captured graph must not depend on autocast's weight-cast cache (torch.cuda.graphs' advice).
            return torch.autocast("cuda", dtype=torch.float16, cache_enabled=not self.cuda_graphs)
        return nullcontext()

    def _infer(self, images: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray) -> InferResult:
        x = torch.from_numpy(images).to(self.device)
        if self.precision == "fp16-lean":
            x = x.half()
        wt = torch.from_numpy(w_texture).to(self.device)
        ws = torch.from_numpy(w_style).to(self.device)
        with torch.inference_mode():
            if self.cuda_graphs:
                out, codes = self._replay(x, wt, ws)
            else:
                with self._autocast():
                    out, codes = self.model(x, wt, ws)
            # The same clamp as saving in the original test(): float32, then [0,1].
            out = out.float().clamp_(0, 1)
        return InferResult(enhanced=out.cpu().numpy(), codes=codes.cpu().numpy())

    def _replay(self, x, wt, ws):
        """Run through the CUDA graph captured for this input shape (captured on first sight, after two warm-up
        runs on a side stream, as torch.cuda.graphs asks)."""
        key = (tuple(x.shape), x.dtype)
        if key not in self.graphs:
            static = (x.clone(), wt.clone(), ws.clone())
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    with self._autocast():
                        self.model(*static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), self._autocast():
                outputs = self.model(*static)
            self.graphs[key] = (graph, static, outputs)
        graph, static, outputs = self.graphs[key]
        for buffer, value in zip(static, (x, wt, ws)):
            buffer.copy_(value)
        graph.replay()
        return outputs

    def _describe(self) -> BackendInfo:
        device = str(self.device)
        if self.device.type == "cuda":
            device = f"{device} ({torch.cuda.get_device_name(self.device)})"
        source = "in-memory model" if isinstance(self.source, CodeEnhance) else str(Path(self.source))
        extra = {"model": source, "config": self.model.config.to_dict(), "torch": torch.__version__,
                 "cuda_graphs": self.cuda_graphs}
        if self.precision in FP16_FORMS:
            extra["fp16"] = FP16_FORMS[self.precision]
        return BackendInfo(name=self.name, device=device, extra=extra,
                           precision=FP16_MIXED if self.precision in FP16_FORMS else self.precision)  # fp32, tf32

    def _close(self) -> None:
        self.model = None
        self.graphs.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
