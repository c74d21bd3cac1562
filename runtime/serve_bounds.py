"""How large a request to the served models may be, and the check of one inference request's header against it.

Triton 2.51 allocates what a request declares before any model sees it: a 255-byte JSON request declaring ``image``
1x3x8000x8000 made the bundled server's resident memory peak 730 MiB higher, a gzip body is inflated in full, and
it has no option to bound a body (``--http-max-input-size`` came later, server PR #8174 of 2025; gRPC's
message limit is fixed at INT32_MAX: src/common.h ``MAX_GRPC_MESSAGE_SIZE``). So ``runtime.serve_front`` checks
each request here first, from the model's own configuration (read from the server at start):

- every input's shape against the largest one the model takes: ``max_batch_size`` for the batch dimension, the
  ``max_hw`` parameter (``export.triton --max-size``) for the image's variable H and W, the configured size for
  the fixed dimensions; its datatype against the configured one (so its byte size is known);
- the body: JSON header plus the binary tensors (Triton's binary tensor extension: the first
  ``Inference-Header-Content-Length`` bytes are the JSON header) must add up to Content-Length exactly.

Only the JSON header is parsed, at most ``JSON_HEADER_LIMIT`` bytes: larger images travel as binary tensors
(tritonclient's default), whose bytes are never parsed here.
"""
from __future__ import annotations

import json
import math
import urllib.request
from dataclasses import dataclass, field

from .triton_backend import configured_max_hw

JSON_HEADER_LIMIT = 1 << 20  # a 64x64 image as JSON numbers is ~120 KB; anything larger should be binary
ADMIN_BODY_LIMIT = 64 << 10  # the admin APIs' JSON bodies (repository index, logging, trace, shm register)
# Triton's datatypes and their sizes (BYTES has no fixed size: a model taking it cannot be bounded here).
ITEM_SIZE = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2, "UINT32": 4,
             "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}


class BoundsError(Exception):
    """A model whose requests cannot be bounded from its configuration (the front end refuses to start)."""


@dataclass(frozen=True)
class InputBound:
    datatype: str
    max_shape: tuple[int, ...]

    @property
    def max_bytes(self) -> int:
        return math.prod(self.max_shape) * ITEM_SIZE[self.datatype]


@dataclass(frozen=True)
class ModelBounds:
    name: str
    inputs: dict[str, InputBound] = field(default_factory=dict)

    @property
    def max_body(self) -> int:
        """The largest legal request: the JSON header plus every input at its largest, as binary."""
        return JSON_HEADER_LIMIT + sum(b.max_bytes for b in self.inputs.values())


def model_bounds(config: dict) -> ModelBounds:
    """The bounds of a model from its configuration as Triton reports it (``GET /v2/models/<m>/config``)."""
    name = config.get("name", "?")
    max_batch = int(config.get("max_batch_size", 0) or 0)
    max_hw = configured_max_hw(config)
    inputs = {}
    for spec in config.get("input", []):
        datatype = str(spec.get("data_type", "")).removeprefix("TYPE_")
        if datatype not in ITEM_SIZE:
            raise BoundsError(f"model {name!r}: input {spec.get('name')!r} has datatype {datatype}, whose size is "
                              "not fixed; the front end cannot bound its requests")
        dims = [int(d) for d in spec.get("dims", [])]
        variable = [i for i, d in enumerate(dims) if d < 0]
        if variable:  # only the image's trailing H, W may vary, bounded by max_hw
            if max_hw is None or variable != [len(dims) - 2, len(dims) - 1]:
                raise BoundsError(f"model {name!r}: input {spec.get('name')!r} has variable dimensions {dims} and "
                                  "the model has no max_hw parameter bounding them; write the repository with "
                                  "python -m export.triton --max-size HxW")
            dims[-2:] = max_hw
        shape = ([max_batch] if max_batch > 0 else []) + dims
        inputs[spec["name"]] = InputBound(datatype, tuple(shape))
    if not inputs:
        raise BoundsError(f"model {name!r}: its configuration lists no inputs")
    return ModelBounds(name, inputs)


def served_bounds(url: str, models) -> dict[str, ModelBounds]:
    """Each model's bounds from its configuration as the server at ``url`` (host:port) loaded it."""
    bounds = {}
    for model in models:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/models/{model}/config", timeout=10) as answer:
                bounds[model] = model_bounds(json.loads(answer.read()))
        except (OSError, ValueError) as e:
            raise BoundsError(f"cannot read model {model!r}'s configuration from the server: {e}") from e
    return bounds


def check_request(bounds: ModelBounds, header, body_length: int, header_length: int) -> str | None:
    """None when the request's JSON ``header`` (already parsed) stays within ``bounds`` and its binary tensors add
    up to the body; else what is wrong, for the client."""
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or not header["inputs"]:
        return "the request must be a JSON object with a non-empty 'inputs' list"
    binary = 0
    seen = set()
    for item in header["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return "each input must be a JSON object with a 'name'"
        name = item["name"]
        bound = bounds.inputs.get(name)
        if bound is None:
            return f"unexpected input {name!r} for model {bounds.name!r} (it takes {', '.join(bounds.inputs)})"
        if name in seen:
            return f"input {name!r} is given twice"
        seen.add(name)
        if item.get("datatype") != bound.datatype:
            return f"input {name!r} must be {bound.datatype}, got {str(item.get('datatype'))[:20]!r}"
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            return f"input {name!r}: 'shape' must be a list of whole numbers >= 0"
        if len(shape) != len(bound.max_shape) or any(d > m for d, m in zip(shape, bound.max_shape)):
            return (f"input {name!r} shape {shape[:8]} exceeds the largest size model {bounds.name!r} takes, "
                    f"{list(bound.max_shape)} (its max batch and largest image HxW; tile larger images on the "
                    "client: runtime.Enhancer does)")
        parameters = item.get("parameters", {})
        if not isinstance(parameters, dict):
            return f"input {name!r}: 'parameters' must be a JSON object"
        if "binary_data_size" in parameters:
            size = parameters["binary_data_size"]
            expected = math.prod(shape) * ITEM_SIZE[bound.datatype]
            if type(size) is not int or size != expected:
                return f"input {name!r}: binary_data_size must be {expected} for shape {shape}, got {size!r}"
            binary += size
    if header_length + binary != body_length:
        return (f"the body is {body_length} bytes but its header ({header_length}) and binary tensors ({binary}) "
                f"add up to {header_length + binary}")
    return None
