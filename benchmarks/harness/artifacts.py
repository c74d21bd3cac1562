"""What the backends load, made on the fly when not given: demo checkpoint, ONNX graphs, FP16 graph, engine.

Each artifact is produced by the project's own tools (codeenhance, export.onnx, export.precision,
export.tensorrt); this module only decides names, reuses what a previous run left in ``--artifacts``, and
records how long each step took. Derived files are named by a hash of their source and of the tools that made
them (``export.onnx.exporter_fingerprint``; for FP16 graphs also ``export.precision.converter_version``), so a
reused file always belongs to the checkpoint or graph of this run and to this version of the toolkit.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from contract.errors import BackendError
from contract.files import file_sha256

OPTIONS = {"checkpoint": "--ckpt", "onnx": "--onnx", "onnx_fp16": "--onnx-fp16", "engine": "--engine"}


class ArtifactError(BackendError):
    """An artifact could not be made; the backends that need it are reported with this reason."""


def file_key(path: Path, length: int = 10) -> str:
    """The start of the file's sha256, the hash every artifact key and sidecar uses."""
    return file_sha256(path)[:length]


class Artifacts:
    """Lazily made artifacts, each at most once: ``get(kind)`` -> Path, raising ArtifactError with the reason."""

    def __init__(self, folder: Path, *, ckpt=None, onnx=None, onnx_fp16=None, engine=None, preset="official",
                 opset=None, sizes=(), batch=1, threads=2, device="cpu", log=print):
        self.folder, self.preset, self.opset, self.log, self.device = Path(folder), preset, opset, log, device
        self.sizes, self.batch, self.threads = list(sizes), batch, threads
        self.paths = {k: Path(v) for k, v in
                      (("checkpoint", ckpt), ("onnx", onnx), ("onnx_fp16", onnx_fp16), ("engine", engine)) if v}
        for kind, path in self.paths.items():
            if not path.exists():
                raise ArtifactError(f"{OPTIONS[kind]} {path} does not exist")
        self.given = set(self.paths)
        self.seconds: dict[str, float] = {}
        self.reused: set[str] = set()
        self.errors: dict[str, str] = {}
        self.makers = {"checkpoint": self._checkpoint, "onnx": lambda: self._graph("gather"),
                       "onnx_onehot": lambda: self._graph("onehot"), "onnx_fp16": self._fp16, "engine": self._engine,
                       "aoti": lambda: self._aoti("fp32"), "aoti_fp16": lambda: self._aoti("fp16"),
                       "openvino_bf16": self._openvino_bf16}

    def get(self, kind: str) -> Path:
        """The artifact's path, made (and timed) on first use; ``seconds_to_make`` of a reused file is its lookup."""
        if kind in self.errors:
            raise ArtifactError(self.errors[kind])
        if kind not in self.paths:
            start = time.perf_counter()
            try:
                self.paths[kind] = self.makers[kind]()
            except Exception as e:  # any failure of a tool: remembered, and every dependent backend says why
                detail = " ".join(str(e).split())[:500]
                self.errors[kind] = f"could not make the {kind} artifact: {type(e).__name__}: {detail}"
                raise ArtifactError(self.errors[kind]) from e
            self.seconds[kind] = time.perf_counter() - start
        return self.paths[kind]

    def describe(self) -> dict:
        return {"paths": {k: str(v) for k, v in self.paths.items()}, "given": sorted(self.given),
                "reused": sorted(self.reused), "seconds_to_make": self.seconds, "errors": self.errors,
                "model": self.model_line()}

    def model_line(self) -> str:
        ckpt = self.paths.get("checkpoint")
        if ckpt is None:
            return "no checkpoint"
        if "checkpoint" in self.given:
            return f"checkpoint {ckpt}"
        return f"UNTRAINED demo checkpoint (random weights, seed 0, preset {self.preset}), written on the fly"

    def _out(self, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / name

    def _reuse(self, path: Path, what: str) -> bool:
        if path.exists():
            self.log(f"reusing {what}: {path}")
            self.reused.add(path.name)
            return True
        self.log(f"making {what}: {path.name} ...")
        return False

    def _checkpoint(self) -> Path:
        import codeenhance
        from codeenhance.config import PRESETS

        path = self._out(f"demo-{self.preset}-seed0.pth")
        if not self._reuse(path, "demo checkpoint"):
            codeenhance.save_demo_checkpoint(path, seed=0, config=PRESETS[self.preset])
        return path

    def _graph(self, lookup: str) -> Path:
        """The fp32 graph with the ``codes`` output, so code agreement can be measured."""
        from export.onnx import export_onnx, exporter_fingerprint

        ckpt = self.get("checkpoint")
        path = self._out(f"{ckpt.stem}-{file_key(ckpt)}-{exporter_fingerprint()}-{lookup}-codes.onnx")
        if not self._reuse(path, f"ONNX graph ({lookup} lookup, with codes)"):
            options = {} if self.opset is None else {"opset": self.opset}
            export_onnx(ckpt, path, with_codes=True, lookup=lookup, overwrite=True, **options)
        return path

    def _fp16(self) -> Path:
        """The mixed-precision graph, made from the fp32 graph of this run by export.precision (its report, with
        the nodes kept in FP32 and why, is written beside it)."""
        from export.onnx import exporter_fingerprint
        from export.precision import convert_file, converter_version

        source = self.get("onnx")
        tools = hashlib.sha256(f"{exporter_fingerprint()} {converter_version()}".encode()).hexdigest()[:10]
        path = self._out(f"{source.stem}-{file_key(source)}-{tools}-fp16.onnx")
        if not self._reuse(path, "FP16 graph (export.precision)"):
            convert_file(source, path, threads=self.threads, overwrite=True,
                         log=lambda text: self.log(text.splitlines()[0]))  # its full report goes to the file
        self.paths["onnx_fp16_report"] = path.with_suffix(".precision.json")
        return path

    def _engine(self) -> Path:
        """A TensorRT engine from the FP16 graph, its profile covering the benchmark sizes and batch."""
        from export.tensorrt import EngineBuilder, import_tensorrt
        from export.trt_plan import BuildPlan, ShapeProfile
        from contract.engine_sidecar import detect_gpu

        source = self.get("onnx_fp16")
        areas = sorted(self.sizes, key=lambda hw: hw[0] * hw[1])
        low = (min(h for h, _ in self.sizes), min(w for _, w in self.sizes))
        high = (max(h for h, _ in self.sizes), max(w for _, w in self.sizes))
        profile = ShapeProfile(low, areas[-1], high, 1, self.batch, self.batch)
        plan = BuildPlan.create(source, profile, trt_version=import_tensorrt().__version__, gpu=detect_gpu(),
                                out=self._out("engines"))
        if not self._reuse(plan.engine_path, "TensorRT engine"):
            EngineBuilder(plan, log=self.log).build()
        return plan.engine_path

    def _openvino_bf16(self) -> Path:
        """The bf16 OpenVINO IR of this run's fp32 graph (export.openvino): what a deployment loads."""
        from export.openvino import export_ir
        from runtime.openvino_ir import import_openvino, writer_fingerprint

        source = self.get("onnx")
        tools = writer_fingerprint(import_openvino().get_version())[:10]
        path = self._out(f"{source.stem}-{file_key(source)}-{tools}-bf16.xml")
        if not self._reuse(path, "OpenVINO bf16 IR (export.openvino)"):
            # The harness measures fidelity itself, on the run's photos: no bar here.
            export_ir(source, path, "bf16", overwrite=True, threads=self.threads, check=False)
        return path

    def _aoti(self, precision: str) -> Path:
        """An AOTInductor package with one static bucket per benchmark size (export.aoti), for this run's device."""
        from export.aoti import export_aoti
        from export.onnx import exporter_fingerprint

        ckpt = self.get("checkpoint")
        sizes = "-".join(f"{h}x{w}" for h, w in self.sizes)
        path = self._out(f"{ckpt.stem}-{file_key(ckpt)}-{exporter_fingerprint()}-{self.device}-{precision}-{sizes}.pt2")
        if not self._reuse(path, f"AOTInductor package ({self.device}, compiles one bucket per size: minutes)"):
            export_aoti(ckpt, path, device=self.device, precision=precision, sizes=self.sizes,
                        max_batch=max(1, self.batch), overwrite=True, log=self.log)
        return path
