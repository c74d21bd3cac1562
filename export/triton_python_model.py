"""Triton Python-backend model for CodeEnhance: ``export.triton`` copies this file to ``<model>/1/model.py``.

It runs the model file next to it through the toolkit's own runtime backends (``runtime.registry``: ONNX Runtime
for an .onnx graph by default; torch, OpenVINO or a compiled package when the repository was made with one), so the
server computes exactly what ``runtime.Enhancer`` computes in process. It sees only the graph contract of
``contract.graph`` (the FP32 image batch [N,3,H,W] and one pair of weights per image in, the enhanced batch out),
imported from the toolkit in ``initialize`` like the runtime: its configuration's I/O is checked there.

Every request is checked on its own (weights by the contract's rule; image finite, every pixel within [0, 1] and
within the configured largest size); a bad one gets an INVALID_ARG error response and the others in the same
dynamic batch still run. The output is checked per request too: an image whose result is not finite fails alone.
Errors say what is wrong with the request and nothing about the server (no traceback, no path, no exception text
from the backend: that goes to the server's log). Nothing raises out of ``execute``, so the stub and the server
keep serving.

The toolkit and its dependencies must be importable by the Python backend's stub: installed in the container's
Python (``pip install codeenhance-deploy onnxruntime``), or listed in the ``python_path`` parameter or the
``CODEENHANCE_PYTHONPATH`` environment variable (``python -m runtime.serve`` sets it), which are *appended* to
``sys.path`` (not prepended: the stub's own standard library must stay first).
"""
import ctypes
import json
import os
import re
import sys


def extend_path() -> None:
    """Append the ``python_path`` parameter (read from ../config.pbtxt: numpy may come from there, and it is needed
    before the config reaches initialize) and $CODEENHANCE_PYTHONPATH to sys.path."""
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config.pbtxt")
    try:
        with open(config) as f:
            found = re.search(r'key:\s*"python_path"\s*value:\s*{\s*string_value:\s*"([^"]*)"', f.read())
    except OSError:
        found = None
    extra = (found.group(1) if found else "").split(os.pathsep) + \
        os.environ.get("CODEENHANCE_PYTHONPATH", "").split(os.pathsep)
    for entry in extra:
        if entry and entry not in sys.path:
            sys.path.append(entry)


extend_path()

import numpy as np  # noqa: E402 - after extend_path
import triton_python_backend_utils as pb_utils  # noqa: E402


# DLPack's capsule names (the DLPack spec): a live tensor, and one a consumer has taken. Module constants: a capsule
# keeps the pointer to its name, so the bytes must live as long as the process.
DLPACK_NAME = ctypes.c_char_p(b"dltensor")
DLPACK_USED_NAME = ctypes.c_char_p(b"used_dltensor")
_capsule_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_valid.argtypes, _capsule_valid.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_int
_capsule_set_name = ctypes.pythonapi.PyCapsule_SetName
_capsule_set_name.argtypes, _capsule_set_name.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_int


def output_tensor(name: str, array: np.ndarray):
    """A response tensor. Through DLPack: the stub's pybind11 numpy bridge predates numpy 2 and reads a numpy 2
    array as 0 bytes (the client then gets an empty or mis-sized output). The stub takes the capsule's tensor and
    renames the capsule with a name numpy does not know as "used", so numpy's capsule destructor printed a
    PyCapsule_GetPointer traceback for every response: once the stub has taken it, the capsule gets the standard
    "used" name, which numpy's destructor skips (the stub owns the tensor now; nothing leaks, nothing is freed
    twice)."""
    if np.lib.NumpyVersion(np.__version__) < "2.0.0":
        return pb_utils.Tensor(name, array)
    capsule = array.__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    if not _capsule_valid(capsule, DLPACK_NAME):  # taken by the stub
        _capsule_set_name(capsule, DLPACK_USED_NAME)
    return tensor


def input_array(request, name: str):
    """A request's input as numpy (None when missing), through DLPack under numpy 2 (see output_tensor)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        return np.from_dlpack(tensor)
    return tensor.as_numpy()


def invalid(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


def internal(message: str):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        try:
            from contract import graph
            from contract.errors import InputError, ToolkitError
            from contract.files import file_sha256
            from contract.provenance import Expect, Provenance, check_fresh
            from runtime.registry import choose_backend
            from runtime.triton_backend import configured_max_hw, model_parameters
        except ImportError as e:
            raise pb_utils.TritonModelException(
                f"codeenhance: cannot import the toolkit ({e}); install codeenhance-deploy and its runtime "
                "dependencies in the Python the backend stub runs, or set the python_path parameter") from e
        self.name = args["model_name"]
        self.contract, self.input_error = graph, InputError
        graph.check_io([i["name"] for i in config.get("input", [])], [o["name"] for o in config.get("output", [])],
                       where=f"{self.name}: its config.pbtxt", error=pb_utils.TritonModelException,
                       fix="write the repository with python -m export.triton")
        params = model_parameters(config)
        self.max_hw = configured_max_hw(config)
        if params.get("max_hw") and self.max_hw is None:  # a bound that cannot be read is no bound: refuse it
            raise pb_utils.TritonModelException(f"{self.name}: max_hw {params['max_hw']!r} in its config.pbtxt is "
                                                "not HxW; write the repository with python -m export.triton")
        self.max_batch = int(config.get("max_batch_size", 0)) or None
        version = os.path.realpath(os.path.join(args["model_repository"], args["model_version"]))
        model_file = os.path.realpath(os.path.join(version, params.get("model_file", "model.onnx")))
        if os.path.commonpath([version, model_file]) != version:  # an absolute path, "..", or a link out
            raise pb_utils.TritonModelException(f"{self.name}: the model_file parameter must name a file in the "
                                                "model's version folder")
        record = Provenance.from_strings(params)
        if record.source_sha256 and os.path.isfile(model_file):  # the file this config was written for
            try:
                check_fresh(record, model_file, "write the repository again with python -m export.triton",
                            what=f"{self.name}: model file",
                            source_sha256=Expect(file_sha256(model_file), label="file than its config records"))
            except ToolkitError as e:
                raise pb_utils.TritonModelException(str(e)) from None
        options = json.loads(params.get("backend_options", "") or "{}")
        spec = choose_backend(model_file, params.get("runtime_backend") or None)
        self.backend = spec.load_class()(model_file, **options)
        self.backend.load()
        info = self.backend.describe()
        pb_utils.Logger.log_info(f"{self.name}: {model_file} on {info.name} ({info.device}, {info.precision}), "
                                 f"largest image {self.max_hw}, max batch {self.max_batch}")

    def check(self, request):
        """(image, w_texture, w_style) of one request, or an error response."""
        contract = self.contract
        arrays = []
        for name in contract.INPUT_NAMES:
            array = input_array(request, name)
            if array is None:
                return invalid(f"{self.name}: input {name!r} is missing")
            arrays.append(array)
        image, *weights = arrays
        what = contract.INPUT_IMAGE
        if image.ndim != 4 or image.shape[1] != 3 or image.dtype != np.float32:
            return invalid(f"{self.name}: {what} must be FP32 [N,3,H,W], got {image.dtype} {list(image.shape)}")
        n, _, h, w = image.shape
        if h < contract.MIN_SIDE or w < contract.MIN_SIDE or n < 1:
            return invalid(f"{self.name}: {what} is empty: {list(image.shape)}")
        if self.max_hw and (h > self.max_hw[0] or w > self.max_hw[1]):
            return invalid(f"{self.name}: {what} {h}x{w} exceeds the largest size this model is configured for, "
                           f"{self.max_hw[0]}x{self.max_hw[1]} (HxW); tile it on the client (runtime.Enhancer does)")
        try:  # one per image ([N,1] on the wire), finite and within the contract's range
            weights = [contract.per_image_weights(np.asarray(value, dtype=np.float32).reshape(-1), n, name)
                       for name, value in zip(contract.WEIGHT_NAMES, weights)]
        except self.input_error as e:
            return invalid(f"{self.name}: {e}")
        if not np.isfinite(image).all():
            return invalid(f"{self.name}: {what} has NaN or infinite values; it must be finite, in [0,1]")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:  # refused, not clipped: the client decides what its data means (Enhancer clips)
            return invalid(f"{self.name}: {what} values span [{low:.4g}, {high:.4g}]; they must be within [0,1]")
        return np.array(image, dtype=np.float32, order="C"), weights[0], weights[1]  # a copy: inputs do not outlive the call

    def execute(self, requests):
        try:
            return self.answer(requests)
        except Exception as e:  # noqa: BLE001 - the stub would send every client a traceback with server paths
            pb_utils.Logger.log_error(f"{self.name}: {type(e).__name__}: {e}")
            return [internal(f"{self.name}: internal error ({type(e).__name__}); the server's log has the details")
                    for _ in requests]

    def answer(self, requests):
        responses = [None] * len(requests)
        groups = {}  # (H, W) -> indexes of the valid requests of that size
        checked = []
        for i, request in enumerate(requests):
            try:
                item = self.check(request)
            except Exception as e:  # noqa: BLE001 - a bad request must never take the batch down
                pb_utils.Logger.log_warn(f"{self.name}: unreadable request: {type(e).__name__}: {e}")
                item = invalid(f"{self.name}: cannot read the request ({type(e).__name__})")
            checked.append(item)
            if isinstance(item, tuple):
                groups.setdefault(item[0].shape[2:], []).append(i)
            else:
                responses[i] = item
        for indexes in groups.values():
            self.run_group(indexes, checked, responses)
        return responses

    def run_group(self, indexes, checked, responses):
        """One backend call per same-size group (within max_batch images); each request gets its own slice."""
        limit = self.max_batch or sum(checked[i][0].shape[0] for i in indexes)
        start = 0
        while start < len(indexes):
            chunk, count = [], 0
            while start < len(indexes) and (not chunk or count + checked[indexes[start]][0].shape[0] <= limit):
                chunk.append(indexes[start])
                count += checked[indexes[start]][0].shape[0]
                start += 1
            try:
                images = np.concatenate([checked[i][0] for i in chunk])
                w_texture = np.concatenate([checked[i][1] for i in chunk])
                w_style = np.concatenate([checked[i][2] for i in chunk])
                out = self.backend.infer(images, w_texture, w_style).enhanced
            except Exception as e:  # noqa: BLE001 - reported to each request of the call, the server goes on
                h, w = checked[chunk[0]][0].shape[2:]
                # The exception's text may name server files and internals: the log gets it, the client its kind.
                pb_utils.Logger.log_error(f"{self.name}: inference of {count} image(s) of {h}x{w} failed: "
                                          f"{type(e).__name__}: {e}")
                message = (f"{self.name}: inference failed for a batch of {count} image(s) of {h}x{w} "
                           f"({type(e).__name__}); the server's log has the details")
                for i in chunk:
                    responses[i] = internal(message)
                continue
            offset = 0
            for i in chunk:
                n = checked[i][0].shape[0]
                part = np.array(out[offset:offset + n], dtype=np.float32, order="C")
                offset += n
                if not np.isfinite(part).all():  # this request's images only: the others' results stand
                    responses[i] = internal(f"{self.name}: the model produced NaN or infinite values for this "
                                            "request's image(s)")
                    continue
                tensor = output_tensor(self.contract.OUTPUT_ENHANCED, part)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])

    def finalize(self):
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.close()
