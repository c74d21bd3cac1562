"""Triton backend: the graph contract over HTTP to a Triton Inference Server (``triton://HOST:PORT/MODEL``).

The server sees only the graph contract (``contract.graph``: the image batch and one pair of weights per image in,
the enhanced batch out); everything about real images (dtype, gray/alpha, tiling) stays in ``runtime.Enhancer`` on the
client. The model's ``max_batch_size`` and largest image (the ``max_hw`` parameter that ``export.triton`` writes)
come from the server's model configuration, so the Enhancer batches and tiles within them. Every error from the
server or the connection becomes a BackendError naming the batch it was for.
"""
from __future__ import annotations

import os
import re

import numpy as np

from contract.cli import MAX_PORT
from contract.errors import InputError
from contract.graph import INPUT_IMAGE, INPUT_NAMES, OUTPUT_ENHANCED, WEIGHT_NAMES, check_io
from contract.sizes import parse_size

from .backend import BackendBase, BackendError, BackendInfo, InferResult
from .options import TritonOptions

# triton://HOST[:PORT]/MODEL[/VERSION]; "triton:/" too, which is what pathlib makes of "triton://" (it folds "//").
URL = re.compile(r"^triton:/{1,2}(?P<host>\[[^\]]+\]|[^/:\[\]]+)(?::(?P<port>\d+))?/(?P<model>[^/]+)(?:/(?P<version>\d+))?/?$")
DEFAULT_PORT = 8000
INSTALL_HINT = 'pip install "codeenhance-deploy[serve]" (tritonclient[http])'


def parse_url(url) -> tuple[str, int, str, str]:
    """(host, port, model, version) of a ``triton://HOST:PORT/MODEL[/VERSION]`` URL; BackendError otherwise."""
    match = URL.match(str(url))
    if not match:
        raise BackendError(f"not a Triton model URL: {url!s}; expected triton://HOST:PORT/MODEL, e.g. "
                           "triton://localhost:8000/codeenhance")
    port = int(match["port"] or DEFAULT_PORT)
    if not 1 <= port <= MAX_PORT:
        raise InputError(f"{url!s}: port {port} is out of range: use 1..{MAX_PORT} (the server's HTTP port)")
    return match["host"], port, match["model"], match["version"] or ""


def configured_size(text: str) -> tuple[int, int] | None:
    """The model config's ``max_hw`` parameter, or None when it has none (or one that is no size)."""
    try:
        return parse_size(text) if text else None
    except InputError:
        return None


class TritonBackend(BackendBase):
    """``url``: triton://HOST:PORT/MODEL (HTTP port). ``timeout``: seconds for one inference request (a large batch
    on CPU takes long; default 600). ``connect_timeout``: seconds to connect and for each answer while loading
    (liveness, readiness, model config; default 10): a port that accepts and never answers fails in that time."""

    name = "triton"

    Options = TritonOptions

    def __init__(self, url: str | os.PathLike, **options):
        super().__init__(**options)
        self.url = str(url)
        self.host, self.port, self.model, self.version = parse_url(self.url)
        self.client = None
        self.config: dict = {}

    @property
    def where(self) -> str:
        return f"triton://{self.host}:{self.port}/{self.model}"

    def _load(self) -> None:
        try:
            import tritonclient.http as httpclient
            from tritonclient.utils import InferenceServerException
        except ImportError as e:
            raise BackendError(f"triton: tritonclient is not installed ({e}); {INSTALL_HINT}") from e
        self._httpclient, self._server_error = httpclient, InferenceServerException
        # Loading talks to the server with the short bound; inference gets the long one once the model is known.
        self.client = httpclient.InferenceServerClient(url=f"{self.host}:{self.port}", connection_timeout=self.connect_timeout,
                                                       network_timeout=self.connect_timeout)
        try:
            if not self.client.is_server_live():
                raise BackendError(f"triton: the server at {self.host}:{self.port} is not live")
            if not self.client.is_model_ready(self.model, self.version):
                index = self.client.get_model_repository_index()
                ready = sorted({m.get("name") for m in index if m.get("state") == "READY"})
                versions = sorted(m.get("version", "") for m in index if m.get("name") == self.model and m.get("state") == "READY")
                if self.version and versions:
                    raise BackendError(f"triton: version {self.version} of model {self.model!r} is not served on "
                                       f"{self.host}:{self.port} (ready versions: {', '.join(versions)}); drop the "
                                       f"version from the URL or name one of those")
                raise BackendError(f"triton: model {self.model!r} is not ready on {self.host}:{self.port} "
                                   f"(ready: {', '.join(ready) or 'none'})")
            self.config = self.client.get_model_config(self.model, self.version)
        except BackendError:
            self.client.close()
            raise
        except Exception as e:  # noqa: BLE001 - connection refused, DNS, timeouts: geventhttpclient raises several types
            self.client.close()
            timed_out = "timeout" in type(e).__name__.lower() or "timed out" in str(e).lower()
            why = (f"no answer within {self.connect_timeout:g} s (connect_timeout)" if timed_out
                   else f"{type(e).__name__}: {e}")
            raise BackendError(f"triton: cannot reach {self.where} ({why}); start the server with "
                               "python -m runtime.serve --repository REPO, or check HOST:PORT (the HTTP port)") from e
        self.client.close()
        self.client = httpclient.InferenceServerClient(url=f"{self.host}:{self.port}", connection_timeout=self.connect_timeout,
                                                       network_timeout=self.timeout)
        inputs = {i["name"]: i for i in self.config.get("input", [])}
        outputs = {o["name"] for o in self.config.get("output", [])}
        try:
            check_io(sorted(inputs), sorted(outputs), where=f"triton: model {self.model!r}", error=BackendError,
                     fix="write the repository with python -m export.triton")
        except BackendError:
            self.client.close()
            raise
        # A weight declared [1] (reshaped to a scalar on the server) travels as [N,1]; declared [] (or with
        # max_batch_size 0, [-1]) as [N].
        self.weight_rank = {name: len(inputs[name].get("dims", [])) for name in WEIGHT_NAMES}
        self.batching = int(self.config.get("max_batch_size", 0)) > 0

    def _infer(self, images: np.ndarray, w_texture: np.ndarray, w_style: np.ndarray) -> InferResult:
        http = self._httpclient
        n, _, h, w = images.shape
        what = f"a batch of {n} image(s) of {h}x{w}"
        inputs = []
        for name, value in zip(INPUT_NAMES, (images, w_texture, w_style)):
            if name != INPUT_IMAGE and self.batching and self.weight_rank[name] == 1:
                value = value.reshape(n, 1)
            tensor = http.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(value, dtype=np.float32), binary_data=True)
            inputs.append(tensor)
        try:
            result = self.client.infer(self.model, inputs, model_version=self.version,
                                       outputs=[http.InferRequestedOutput(OUTPUT_ENHANCED, binary_data=True)])
            out = result.as_numpy(OUTPUT_ENHANCED)
        except self._server_error as e:
            raise BackendError(f"triton: {self.where} failed {what}: {e.message() or e}"
                               f"{f' (HTTP {e.status()})' if e.status() else ''}") from e
        except Exception as e:  # noqa: BLE001 - the connection dropped (server killed), timed out, ...
            raise BackendError(f"triton: {self.where} did not answer {what} ({type(e).__name__}: {e}); "
                               "nothing was returned for it") from e
        if out is None or out.shape != images.shape:
            raise BackendError(f"triton: {self.where} returned {None if out is None else list(out.shape)} for {what}, "
                               f"expected {list(images.shape)}")
        return InferResult(enhanced=out.astype(np.float32, copy=False))

    def _describe(self) -> BackendInfo:
        params = {k: v.get("string_value", "") for k, v in self.config.get("parameters", {}).items()}
        kind = self.config.get("platform") or self.config.get("backend") or "?"
        return BackendInfo(
            name=self.name,
            device=f"{self.where} ({kind})",
            precision=params.get("precision", "as served"),
            max_hw=configured_size(params.get("max_hw", "")),
            larger="write the repository with a larger --max-size (python -m export.triton) and restart the server",
            max_batch=int(self.config.get("max_batch_size", 0)) or None,
            extra={"url": self.where, "served_by": kind, "dynamic_batching": "dynamic_batching" in self.config,
                   "instances": [g.get("count") for g in self.config.get("instance_group", [])]},
        )

    def _close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
