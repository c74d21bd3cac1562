"""python -m export.triton --model model.onnx --out REPO: a Triton Inference Server model repository.

Models written (each keeps the graph contract of ``contract.graph``: the FP32 image batch and one pair of FP32 weights
per image in, the FP32 enhanced batch out):

- ``codeenhance``: Python backend running the model through this toolkit's runtime backends (ONNX Runtime by
  default, or any backend of ``runtime.registry`` with --python-model/--python-backend). It runs on any Triton,
  GPU or not, and is the one ``python -m runtime.serve`` serves here. Checks each request (weights, NaN, pixels
  outside [0,1], the largest size) and answers a bad one with an error without failing the rest of its batch.
- ``codeenhance_onnx``: the ``onnxruntime_onnx`` platform with the TensorRT (FP32 by default) and CUDA execution
  accelerators configured, for a Triton with a GPU.
- ``codeenhance_trt``: the ``tensorrt_plan`` platform for an engine from ``python -m export.tensorrt`` (only with
  --engine; its sidecar must be there and follow the contract; the engine is mapped to the compute capability it
  was built for).

Every model has dynamic batching (Triton batches requests whose inputs have the same shape) and an instance
group; REPO/README.md tells an operator how to run it. Exit status: 0 written, 2 bad arguments or model files.
"""
from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from contract import cli as common
from contract.files import ManagedFolder, file_sha256
from contract.errors import EXIT_OK, InputError
from contract.graph import (INPUT_IMAGE, INPUT_NAMES, INPUT_W_STYLE, INPUT_W_TEXTURE, OUTPUT_ENHANCED, PAD_MULTIPLE,
                            WEIGHT_RANGE, check_io)
from contract.provenance import Kind, Provenance, read_provenance
from runtime.registry import BACKENDS, choose_backend, is_url

PYTHON_MODEL, ONNX_MODEL, TRT_MODEL = "codeenhance", "codeenhance_onnx", "codeenhance_trt"
PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_python_model.py")
# The Enhancer's per-call budget (runtime.enhancer.DEFAULT_MAX_PIXELS is 1920x1088): the default largest image.
DEFAULT_MAX_HW = (1088, 1920)
DEFAULT_MAX_BATCH = 8
DEFAULT_DELAY_US = 1000
OPT_HW = (720, 1280)  # the TensorRT EP's optimisation shape (and the ONNX model's warmup)


# A repository that cannot be written (options, model files, engine sidecar): a bad input.
RepositoryError = InputError


@dataclass(frozen=True)
class Serving:
    """What every model in the repository shares."""

    max_batch: int = DEFAULT_MAX_BATCH
    instances: int = 1
    dynamic_batching: bool = True
    delay_us: int = DEFAULT_DELAY_US
    max_hw: tuple[int, int] = DEFAULT_MAX_HW

    def validate(self) -> None:
        if self.max_batch < 1 or self.instances < 1:
            raise RepositoryError(f"--max-batch and --instances must be >= 1, got {self.max_batch}, {self.instances}")
        if self.delay_us < 0:
            raise RepositoryError(f"--delay-us must be >= 0, got {self.delay_us}")
        if min(self.max_hw) < 1:
            raise RepositoryError(f"--max-size must be HxW with positive sides, got {self.max_hw}")


def io_block(data_type: str = "TYPE_FP32") -> str:
    """Inputs and outputs in Triton's terms: with max_batch_size > 0 the batch dimension is implicit; a weight is
    one number per image, declared [1] and reshaped to a scalar so the model gets [N] (the graph's shape)."""
    image, w_texture, w_style = INPUT_NAMES
    weight = '  {{ name: "{}" data_type: {} dims: [ 1 ] reshape: {{ shape: [ ] }} }}'
    return "\n".join([
        "input [",
        f'  {{ name: "{image}" data_type: {data_type} dims: [ 3, -1, -1 ] }},',
        weight.format(w_texture, data_type) + ",",
        weight.format(w_style, data_type),
        "]",
        "output [",
        f'  {{ name: "{OUTPUT_ENHANCED}" data_type: {data_type} dims: [ 3, -1, -1 ] }}',
        "]",
    ])


def batching_block(serving: Serving) -> str:
    if not serving.dynamic_batching:
        return "# dynamic batching off: each request runs alone"
    return ("# Triton batches only requests whose inputs have the same shape (same H and W).\n"
            f"dynamic_batching {{ max_queue_delay_microseconds: {serving.delay_us} }}")


def parameter(key: str, value: str) -> str:
    return f"parameters: {{ key: {json.dumps(key)} value: {{ string_value: {json.dumps(value)} }} }}"


def python_config(name: str, serving: Serving, model_file: str, runtime_backend: str = "",
                  backend_options: dict | None = None, python_path: str = "") -> str:
    lines = [
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {serving.max_batch}",
        io_block(),
        batching_block(serving),
        f"instance_group [ {{ count: {serving.instances} kind: KIND_CPU }} ]",
        parameter("model_file", model_file),
        parameter("runtime_backend", runtime_backend),
        parameter("backend_options", json.dumps(backend_options or {})),
        parameter("max_hw", f"{serving.max_hw[0]}x{serving.max_hw[1]}"),
        parameter("python_path", python_path),
    ]
    return "\n".join(lines) + "\n"


def shapes(n: int, h: int, w: int) -> str:
    """An ORT TensorRT-EP profile shape list for the three inputs."""
    image, w_texture, w_style = INPUT_NAMES
    return f"{image}:{n}x3x{h}x{w},{w_texture}:{n},{w_style}:{n}"


def warmup_block(h: int, w: int) -> str:
    """One batch-1 request at the optimisation shape (zeros are valid weights), so the first client does not pay
    for the TensorRT engine build."""
    image, w_texture, w_style = INPUT_NAMES
    return "\n".join([
        "model_warmup [ {",
        f'  name: "{h}x{w}" batch_size: 1',
        f'  inputs {{ key: "{image}" value: {{ data_type: TYPE_FP32 dims: [ 3, {h}, {w} ] zero_data: true }} }}',
        f'  inputs {{ key: "{w_texture}" value: {{ data_type: TYPE_FP32 dims: [ 1 ] zero_data: true }} }}',
        f'  inputs {{ key: "{w_style}" value: {{ data_type: TYPE_FP32 dims: [ 1 ] zero_data: true }} }}',
        "} ]",
    ])


def onnx_config(name: str, serving: Serving, precision_mode: str = "FP32") -> str:
    max_h, max_w = serving.max_hw
    opt_h, opt_w = min(OPT_HW[0], max_h), min(OPT_HW[1], max_w)
    trt = {
        "precision_mode": precision_mode,
        "max_workspace_size_bytes": str(4 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/tmp/codeenhance_trt_cache",
        "trt_timing_cache_enable": "1",
        "trt_profile_min_shapes": shapes(1, 1, 1),
        "trt_profile_opt_shapes": shapes(1, opt_h, opt_w),
        "trt_profile_max_shapes": shapes(serving.max_batch, max_h, max_w),
    }
    trt_params = "\n".join(f'      parameters {{ key: "{k}" value: "{v}" }}' for k, v in trt.items())
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        'default_model_filename: "model.onnx"',
        f"max_batch_size: {serving.max_batch}",
        io_block(),
        batching_block(serving),
        f"instance_group [ {{ count: {serving.instances} kind: KIND_GPU }} ]",
        "# TensorRT first (ONNX Runtime's TensorRT EP, nodes it cannot take go to CUDA), else the CUDA EP.",
        "optimization { execution_accelerators { gpu_execution_accelerator: [",
        '    { name: "tensorrt"',
        trt_params,
        "    } ] } }",
        warmup_block(opt_h, opt_w),
    ]
    return "\n".join(lines) + "\n"


def trt_config(name: str, serving: Serving, compute_capability: str | None) -> str:
    lines = [
        f'name: "{name}"',
        'platform: "tensorrt_plan"',
        'default_model_filename: "model.plan"',
    ]
    if compute_capability:
        lines.append(f'cc_model_filenames {{ key: "{compute_capability}" value: "model.plan" }}')
    lines += [
        f"max_batch_size: {serving.max_batch}",
        io_block(),
        batching_block(serving),
        f"instance_group [ {{ count: {serving.instances} kind: KIND_GPU }} ]",
        "# CUDA graphs stay off: with free H and W a graph serves only the shape it was captured for.",
    ]
    return "\n".join(lines) + "\n"


def check_onnx(path: Path) -> str:
    """The graph's precision; RepositoryError when it is not an ONNX graph with the contract's inputs."""
    from .trt_plan import PlanError, inspect_onnx

    try:
        summary = inspect_onnx(path)
    except PlanError as e:
        raise RepositoryError(f"--model {path}: {e}") from e
    check_io(summary.inputs, summary.outputs, where=f"--model {path}", error=RepositoryError,
             dtypes={n: s.dtype for n, s in summary.inputs.items()},
             fix="export it with python -m export.onnx (the repository's contract is FP32 I/O)")
    return summary.precision


def check_engine(engine: Path, serving: Serving) -> tuple[dict, Serving]:
    """The engine's sidecar, and the serving limits narrowed to its shape profile."""
    from contract.engine_sidecar import StaleEngineError, read_sidecar, sidecar_path

    if not engine.is_file():
        raise RepositoryError(f"--engine {engine} not found")
    try:
        sidecar = read_sidecar(engine)
    except StaleEngineError as e:
        raise RepositoryError(str(e)) from e
    if sidecar is None:
        raise RepositoryError(f"--engine {engine} has no sidecar {sidecar_path(engine).name}: the TensorRT version "
                              "and GPU it was built for are unknown. Build it with python -m export.tensorrt")
    built = Provenance.from_json(sidecar).built_for
    missing = [k for k, v in (("TensorRT version", built.tensorrt_version), ("GPU name", built.gpu_name),
                              ("compute capability", built.compute_capability)) if not v]
    io = sidecar.get("io", {})
    if missing:
        raise RepositoryError(f"engine sidecar {sidecar_path(engine)} lacks {', '.join(missing)}; rebuild the engine")
    check_io(io.get("inputs", []), io.get("outputs", []), where=f"engine {engine} (its sidecar's io)",
             error=RepositoryError, fix="rebuild it with python -m export.tensorrt")
    image_max = (Provenance.from_json(sidecar).shapes or {}).get(INPUT_IMAGE, {}).get("max")
    if not image_max or len(image_max) != 4:
        raise RepositoryError(f"engine sidecar {sidecar_path(engine)} has no image profile; rebuild the engine")
    narrowed = Serving(max_batch=min(serving.max_batch, int(image_max[0])), instances=serving.instances,
                       dynamic_batching=serving.dynamic_batching, delay_us=serving.delay_us,
                       max_hw=(min(serving.max_hw[0], int(image_max[2])), min(serving.max_hw[1], int(image_max[3]))))
    return sidecar, narrowed


def provenance_parameters(served: Path) -> str:
    """The served file's provenance record (contract.provenance) as config parameters, its own sha256 as the
    source: the Python model checks it at load, and an operator reads where the model comes from."""
    if not served.is_file():  # a folder (an IR copied whole): its files carry their own records
        return ""
    record = read_provenance(served).with_(kind=Kind.TRITON, source_sha256=file_sha256(served), payload_sha256=None)
    return "\n".join(parameter(key, value) for key, value in record.to_strings().items()) + "\n"


def write_model(repo: Path, name: str, config: str, files: dict[str, Path | str], served: Path | None = None) -> Path:
    """``repo/name/config.pbtxt`` and ``repo/name/1/<file>`` for each file (a path to copy, or text); ``served``:
    the model file whose provenance record the config carries."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config + (provenance_parameters(served) if served else ""))
    for target, source in files.items():
        if isinstance(source, Path):
            shutil.copyfile(source, version / target)
        else:
            (version / target).write_text(source)
    return repo / name


def check_python_model(source: Path, backend: str | None, flag: str) -> None:
    """What the Python model will run, checked now by the rule it uses on the server (runtime.registry): a file
    the chosen backend runs, with everything it needs beside it."""
    try:
        choose_backend(source, backend or None)
    except InputError as e:
        raise RepositoryError(f"{flag} {source}: {str(e).replace('--backend', '--python-backend')}") from None
    if backend == "triton" or (backend is None and is_url(str(source))):
        raise RepositoryError(f"{flag} {source}: the Python model runs a local file, not a triton:// URL")
    if source.suffix.lower() == ".xml" and not source.with_suffix(".bin").is_file():
        raise RepositoryError(f"{flag} {source}: the OpenVINO IR's weights {source.with_suffix('.bin').name} are not "
                              "beside it; write the IR with python -m export.openvino (it writes both)")


def write_python_model(repo: Path, model: Path, serving: Serving, *, name: str = PYTHON_MODEL,
                       runtime_backend: str = "", backend_options: dict | None = None) -> Path:
    """The Python-backend model only (also used by the benchmark for its variants)."""
    target = f"model{model.suffix}" if model.is_file() else model.name
    version = repo / name / "1"
    if model.is_dir():  # an OpenVINO IR folder or similar: copied whole
        version.mkdir(parents=True, exist_ok=True)
        shutil.copytree(model, version / target, dirs_exist_ok=True)
    config = python_config(name, serving, target, runtime_backend, backend_options)
    files = {"model.py": PYTHON_MODEL_SOURCE.read_text()}
    if model.is_file():
        files[target] = model
        if model.suffix.lower() == ".xml":  # an OpenVINO IR: its weights travel with it
            files["model.bin"] = model.with_suffix(".bin")
    return write_model(repo, name, config, files, served=model)


def write_repository(model: Path, out: Path, *, serving: Serving = Serving(), engine: Path | None = None,
                     python_model: Path | None = None, python_backend: str | None = None,
                     threads: int | None = None, trt_ep_precision: str = "FP32", overwrite: bool = False) -> list[str]:
    """Write the repository; returns the model names written."""
    serving.validate()
    model, out = Path(model), Path(out)
    if not model.is_file():
        raise RepositoryError(f"--model {model} not found (an ONNX graph from python -m export.onnx)")
    precision = check_onnx(model)
    sidecar, trt_serving = check_engine(Path(engine), serving) if engine else (None, None)
    if python_model is not None and not Path(python_model).exists():
        raise RepositoryError(f"--python-model {python_model} not found")
    check_python_model(Path(python_model or model), python_backend, "--python-model" if python_model else "--model")
    repository = ManagedFolder(out, "export.triton")
    repository.prepare(overwrite, inputs=[p for p in (model, engine, python_model) if p is not None])
    try:  # what was written is ours, also after a failure: a rerun with --overwrite may replace it
        options = {"threads": threads} if threads else {}
        write_python_model(out, Path(python_model or model), serving, runtime_backend=python_backend or "",
                           backend_options=options)
        names = [PYTHON_MODEL]
        write_model(out, ONNX_MODEL, onnx_config(ONNX_MODEL, serving, trt_ep_precision), {"model.onnx": model}, served=model)
        names.append(ONNX_MODEL)
        if engine:
            write_model(out, TRT_MODEL, trt_config(TRT_MODEL, trt_serving,
                                                       Provenance.from_json(sidecar).built_for.compute_capability),
                        {"model.plan": Path(engine), "model.plan.json": json.dumps(sidecar, indent=2) + "\n"},
                        served=Path(engine))
            names.append(TRT_MODEL)
        (out / "README.md").write_text(operator_readme(names, serving, trt_serving, sidecar, precision, trt_ep_precision,
                                                       Path(python_model or model).name, python_backend))
    finally:
        repository.record()
    return names


def operator_readme(names, serving: Serving, trt_serving, sidecar, precision, trt_ep_precision, python_file,
                    python_backend) -> str:
    max_h, max_w = serving.max_hw
    low, high = WEIGHT_RANGE
    trt_lines = ""
    if sidecar:
        built = Provenance.from_json(sidecar).built_for
        trt_lines = f"""
- `{TRT_MODEL}`: TensorRT engine `1/model.plan`, built with TensorRT {built.tensorrt_version} on
  {built.gpu_name} (compute capability {built.compute_capability}; `1/model.plan.json` is its sidecar).
  It loads only where the container's TensorRT is exactly {built.tensorrt_version} and the GPU has that compute
  capability: pick the Triton container release whose TensorRT matches, or rebuild the engine inside it
  (`python -m export.tensorrt`). Largest image {trt_serving.max_hw[0]}x{trt_serving.max_hw[1]}, max batch
  {trt_serving.max_batch} (the engine's profile).
"""
    return f"""# CodeEnhance model repository for Triton Inference Server

Written by `python -m export.triton`. Models: {', '.join(f'`{n}`' for n in names)}.

## Contract (every model)
- inputs: `{INPUT_IMAGE}` FP32 [N,3,H,W], RGB in [0,1], any H, W >= 1 (padding to the network's multiple of
  {PAD_MULTIPLE} happens inside the model); `{INPUT_W_TEXTURE}`, `{INPUT_W_STYLE}` FP32 [N,1] on the wire (one per
  image; [{low:g}, {high:g}], 1.0 is the trained default, 0 turns the term off);
- output: `{OUTPUT_ENHANCED}` FP32 [N,3,H,W] in [0,1].
- max batch {serving.max_batch}; largest image {max_h}x{max_w} (HxW) for `{PYTHON_MODEL}` (checked per request:
  larger images get an INVALID_ARG error, the client tiles them: `runtime.Enhancer` does).
- Image-level work (8/16-bit, gray, alpha, tiling) is the client's: `python -m runtime photos/ -o out/ --model
  triton://HOST:8000/{PYTHON_MODEL}` or `runtime.Enhancer(backend=TritonBackend("triton://HOST:8000/{PYTHON_MODEL}"))`.

## Models
- `{PYTHON_MODEL}`: Python backend; `1/model.py` runs `1/{python_file}` through the toolkit's runtime
  ({python_backend or 'backend chosen from the file: ONNX Runtime for .onnx'}), {serving.instances} instance(s) on
  CPU (each is a process). Needs the toolkit in the Python that the backend stub runs (see below).
- `{ONNX_MODEL}`: ONNX Runtime backend (graph precision: {precision}) with ONNX Runtime's TensorRT execution
  provider in {trt_ep_precision} (engine cache in /tmp/codeenhance_trt_cache inside the container; the first load
  builds it: a warmup request at {min(OPT_HW[0], max_h)}x{min(OPT_HW[1], max_w)} does it before the model is
  ready) and CUDA for what TensorRT does not take. {serving.instances} instance(s) per GPU. For FP16 use the mixed
  graph of `python -m export.precision` (it keeps the code lookup and normalisations in FP32; the EP's blanket
  FP16 mode would not).
{trt_lines}
## Batching and how clients should size images
Dynamic batching is {'on' if serving.dynamic_batching else 'off'}{f' (max queue delay {serving.delay_us} us)' if serving.dynamic_batching else ''}.
Triton puts requests into one batch only when their inputs have the same shape, so only same-size images are
batched; other sizes run in their own batches (never rejected). Padding a client's image to a common size is not
an option: the model's IFT statistics are global over the image, so padding changes the result. Clients get
batching by sending their native sizes when they are uniform (a camera's frames), and large images tiled at one
tile size (`runtime.Enhancer` cuts tiles of one size per image, {PAD_MULTIPLE}k-1 pixels: no extra padding work).

## Run it in the Triton container (25.07 or newer)
Use Triton container 25.07 (Triton 2.59) or newer: older servers, 2.51 included, have published CVEs that any client
of the ports can reach (CVE-2025-23310/23311: chunked HTTP bodies; CVE-2025-23319/23320/23334: the Python
backend's shared memory). Lock the control plane: model control `none` (no client can load, unload or upload a
model, which would run its code in the server) and the admin APIs behind a key from a file (Triton reads the key
only from its command line: inside the container, `ps` shows it to whoever can run commands there).
```bash
docker run --rm --gpus all --shm-size=1g -p127.0.0.1:8000:8000 -p127.0.0.1:8001:8001 \\
  -p127.0.0.1:8002:8002 -v $PWD/{'REPO'}:/models:ro -v $PWD/admin.key:/run/admin.key:ro \\
  nvcr.io/nvidia/tritonserver:25.07-py3 \\
  bash -c 'pip install codeenhance-deploy onnxruntime && K=$(cat /run/admin.key) && \\
  A=model-repository,shared-memory,logging,trace,statistics && \\
  exec tritonserver --model-repository=/models --model-control-mode=none \\
    --http-restricted-api=$A:codeenhance-admin-key=$K --grpc-restricted-protocol=$A:codeenhance-admin-key=$K'
```
- Inference, health, metadata and model configuration stay open to whoever reaches the ports (no authentication,
  no TLS, no request size limit in Triton): publish them on loopback or a private network behind a TLS proxy with
  authentication and body limits; admin calls send the header `codeenhance-admin-key` (gRPC:
  `triton-grpc-protocol-codeenhance-admin-key`).
- The Python backend's stub runs the container's Python: install the toolkit and onnxruntime there (or point the
  `python_path` parameter of `{PYTHON_MODEL}/config.pbtxt` at a folder holding them, or pack an environment with
  conda-pack and set `EXECUTION_ENV_PATH`; its Python minor version must be the stub's).
- Without a GPU, serve only `{PYTHON_MODEL}`: `--model-control-mode=explicit --load-model={PYTHON_MODEL}`, and keep
  `model-repository` in the restricted list (explicit mode lets key holders load models).
- Here (no container): `python -m runtime.serve --repository REPO [--admin-key-file admin.key]` starts the Triton
  2.51 server shipped in the `nvidia-pytriton` wheel with the Python backend and the same locks (the
  `{ONNX_MODEL}`/`{TRT_MODEL}` models need backends that wheel lacks and are left out); for development on
  127.0.0.1, not for production (its CVEs above).
- Health: `curl localhost:8000/v2/health/ready`; per model `/v2/models/{PYTHON_MODEL}/ready`.

## Growing past one machine
- Instances: `instance_group` count (`--instances`) runs more copies per machine (per GPU for the GPU models); on
  CPU each `{PYTHON_MODEL}` instance needs its share of cores (set `--threads` so instances x threads <= cores).
- Replicas: the server is stateless; run one per machine or GPU node behind a load balancer (Kubernetes
  Deployment with readiness probe `/v2/health/ready`), and scale on queue time (`nv_inference_queue_duration_us`
  on the metrics port 8002).
"""


def parse_args(argv):
    p = common.parser("python -m export.triton", __doc__)
    p.add_argument("--model", required=True, type=Path, help="ONNX graph (python -m export.onnx / export.precision)")
    common.add_output(p, help="the model repository folder to write", overwrite_help="replace an existing repository")
    p.add_argument("--engine", type=Path, help="TensorRT engine with its sidecar (python -m export.tensorrt)")
    p.add_argument("--max-batch", type=common.positive_int, default=DEFAULT_MAX_BATCH, help=f"max_batch_size (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--instances", type=common.positive_int, default=1, help="instances per model (per GPU for GPU models; default 1)")
    common.add_sizes(p, flag="--max-size", many=False, default=DEFAULT_MAX_HW,
                     help=f"largest image per request (default {DEFAULT_MAX_HW[0]}x{DEFAULT_MAX_HW[1]})")
    p.add_argument("--delay-us", type=common.non_negative_int, default=DEFAULT_DELAY_US,
                   help=f"dynamic batching's max queue delay in microseconds (default {DEFAULT_DELAY_US})")
    p.add_argument("--no-dynamic-batching", action="store_true", help="run each request alone")
    p.add_argument("--python-model", type=Path, help=f"model file for {PYTHON_MODEL} (default: --model)")
    p.add_argument("--python-backend", choices=sorted(b for b, spec in BACKENDS.items() if not spec.schemes),
                   help=f"runtime backend for {PYTHON_MODEL} (default: from the file)")
    common.add_threads(p, help=f"ONNX Runtime/torch threads per {PYTHON_MODEL} instance")
    p.add_argument("--trt-ep-precision", choices=("FP32", "FP16"), default="FP32",
                   help=f"{ONNX_MODEL}: TensorRT EP precision_mode (FP16 casts everything; default FP32)")
    return p.parse_args(argv)


@common.run_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    serving = Serving(max_batch=args.max_batch, instances=args.instances, dynamic_batching=not args.no_dynamic_batching,
                      delay_us=args.delay_us, max_hw=args.max_size)
    names = write_repository(args.model, args.out, serving=serving, engine=args.engine,
                             python_model=args.python_model, python_backend=args.python_backend,
                             threads=args.threads, trt_ep_precision=args.trt_ep_precision, overwrite=args.overwrite)
    print(f"wrote {args.out}: {', '.join(names)} (see {args.out / 'README.md'})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
