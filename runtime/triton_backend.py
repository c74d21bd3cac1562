"""Triton backend: the graph contract over HTTP to a Triton Inference Server (``triton://HOST:PORT/MODEL``).

The server sees only the graph contract (``contract.graph``: the image batch and one pair of weights per image in,
the enhanced batch out); everything about real images (dtype, gray/alpha, tiling) stays in ``runtime.Enhancer`` on the
client. The model's ``max_batch_size`` and largest image (the ``max_hw`` parameter that ``export.triton`` writes)
come from the server's model configuration, so the Enhancer batches and tiles within them. Every error from the
server or the connection becomes a BackendError naming the batch it was for.

Several endpoints (``triton://HOST1:PORT1,HOST2:PORT2/MODEL``: replicas serving the same repository): the client
uses one; a batch that it does not answer (connection refused or dropped, a 5xx answer: server killed, stopping,
a dead stub) is sent again to the next, in order (an inference has no side effect, so repeating it is safe). A 4xx
answer (a bad request) is not retried: every replica would refuse it. A replica is used only once its model is
ready and its configuration (batch, largest image, inputs) equals the first one's.
"""
from __future__ import annotations

import os
import re

import numpy as np

from contract.cli import MAX_PORT
from contract.errors import InputError
from contract.graph import INPUT_IMAGE, INPUT_NAMES, OUTPUT_ENHANCED, WEIGHT_NAMES, check_io
from contract.sizes import parse_size
from contract.provenance import Provenance

from .backend import BackendBase, BackendError, BackendInfo, InferResult
from .options import TritonOptions

# triton://HOST[:PORT][,HOST[:PORT]...]/MODEL[/VERSION]; "triton:/" too, which is what pathlib makes of
# "triton://" (it folds "//").
URL = re.compile(r"^triton:/{1,2}(?P<hosts>[^/]+)/(?P<model>[^/]+)(?:/(?P<version>\d+))?/?$")
ENDPOINT = re.compile(r"^(?P<host>\[[^\]]+\]|[^/:,\[\]]+)(?::(?P<port>\d+))?$")
DEFAULT_PORT = 8000
INSTALL_HINT = 'pip install "codeenhance-deploy[serve]" (tritonclient[http])'


def parse_endpoints(url) -> tuple[list[tuple[str, int]], str, str]:
    """([(host, port), ...], model, version) of ``triton://HOST:PORT[,HOST:PORT...]/MODEL[/VERSION]``."""
    match = URL.match(str(url))
    endpoints = []
    for part in (match["hosts"].split(",") if match else []):
        found = ENDPOINT.match(part.strip())
        if not found:
            match = None
            break
        port = int(found["port"] or DEFAULT_PORT)
        if not 1 <= port <= MAX_PORT:
            raise InputError(f"{url!s}: port {port} is out of range: use 1..{MAX_PORT} (the server's HTTP port)")
        endpoints.append((found["host"], port))
    if not match:
        raise BackendError(f"not a Triton model URL: {url!s}; expected triton://HOST:PORT/MODEL, e.g. "
                           "triton://localhost:8000/codeenhance, or several replicas: "
                           "triton://HOST1:8000,HOST2:8000/codeenhance")
    if len(set(endpoints)) < len(endpoints):
        raise InputError(f"{url!s}: an endpoint is listed twice")
    return endpoints, match["model"], match["version"] or ""


def comparable(config: dict) -> tuple:
    """What must be equal between replicas: batch, largest image, inputs and outputs."""
    shapes = lambda key: sorted((t.get("name"), tuple(t.get("dims", []))) for t in config.get(key, []))  # noqa: E731
    return config.get("max_batch_size", 0), model_parameters(config).get("max_hw", ""), shapes("input"), shapes("output")


def model_parameters(config: dict) -> dict[str, str]:
    """The string parameters of a model configuration (as Triton reports it, JSON), e.g. ``max_hw``."""
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def configured_max_hw(config: dict) -> tuple[int, int] | None:
    """The largest image a model configuration allows (its ``max_hw`` parameter, written by ``export.triton``), or
    None when it has none or one that is no size."""
    text = model_parameters(config).get("max_hw", "")
    try:
        return parse_size(text) if text else None
    except InputError:
        return None


class TritonBackend(BackendBase):
    """``url``: triton://HOST:PORT/MODEL (HTTP port), or HOST1:PORT1,HOST2:PORT2 for replicas. ``timeout``: seconds
    for one inference request (a large batch on CPU takes long; default 600). ``connect_timeout``: seconds to
    connect and for each answer while loading (liveness, readiness, model config; default 10): a port that accepts
    and never answers fails in that time. ``failovers``: how many batches went to another replica."""

    name = "triton"

    Options = TritonOptions

    def __init__(self, url: str | os.PathLike, **options):
        super().__init__(**options)
        self.url = str(url)
        self.endpoints, self.model, self.version = parse_endpoints(self.url)
        self.clients: dict[tuple[str, int], object] = {}  # endpoint -> client, once checked
        self.active = self.endpoints[0]
        self.failovers = 0
        self.config: dict = {}

    @property
    def where(self) -> str:
        return f"triton://{','.join(f'{h}:{p}' for h, p in self.endpoints)}/{self.model}"

    @staticmethod
    def at(endpoint) -> str:
        return f"{endpoint[0]}:{endpoint[1]}"

    def _load(self) -> None:
        try:
            import tritonclient.http as httpclient
            from tritonclient.utils import InferenceServerException
        except ImportError as e:
            raise BackendError(f"triton: tritonclient is not installed ({e}); {INSTALL_HINT}") from e
        self._httpclient, self._server_error = httpclient, InferenceServerException
        problems = []
        for endpoint in self.endpoints:  # the first that answers gives the configuration the others must share
            try:
                self.clients[endpoint] = self._connect(endpoint)
                self.active = endpoint
                break
            except BackendError as e:
                problems.append(str(e))
        else:
            raise BackendError(problems[0] if len(problems) == 1 else
                               "triton: no replica is usable:\n  " + "\n  ".join(problems))
        inputs = {i["name"]: i for i in self.config.get("input", [])}
        outputs = {o["name"] for o in self.config.get("output", [])}
        try:
            check_io(sorted(inputs), sorted(outputs), where=f"triton: model {self.model!r}", error=BackendError,
                     fix="write the repository with python -m export.triton")
        except BackendError:
            self._close()
            raise
        # A weight declared [1] (reshaped to a scalar on the server) travels as [N,1]; declared [] (or with
        # max_batch_size 0, [-1]) as [N].
        self.weight_rank = {name: len(inputs[name].get("dims", [])) for name in WEIGHT_NAMES}
        self.batching = int(self.config.get("max_batch_size", 0)) > 0

    def _connect(self, endpoint):
        """A client for ``endpoint`` once its model is ready (and, for a replica, configured like the first)."""
        httpclient, at = self._httpclient, self.at(endpoint)
        # Loading talks to the server with the short bound; inference gets the long one once the model is known.
        client = httpclient.InferenceServerClient(url=at, connection_timeout=self.connect_timeout,
                                                  network_timeout=self.connect_timeout)
        try:
            if not client.is_server_live():
                raise BackendError(f"triton: the server at {at} is not live")
            if not client.is_model_ready(self.model, self.version):
                raise BackendError(self._not_ready(client, at))
            config = client.get_model_config(self.model, self.version)
        except BackendError:
            client.close()
            raise
        except Exception as e:  # noqa: BLE001 - connection refused, DNS, timeouts: geventhttpclient raises several types
            client.close()
            timed_out = "timeout" in type(e).__name__.lower() or "timed out" in str(e).lower()
            why = (f"no answer within {self.connect_timeout:g} s (connect_timeout)" if timed_out
                   else f"{type(e).__name__}: {e}")
            raise BackendError(f"triton: cannot reach triton://{at}/{self.model} ({why}); start the server with "
                               "python -m runtime.serve --repository REPO, or check HOST:PORT (the HTTP port)") from e
        client.close()
        if self.config and comparable(config) != comparable(self.config):
            raise BackendError(f"triton: model {self.model!r} on {at} is configured unlike on "
                               f"{self.at(self.active)} (batch, largest image or inputs differ); replicas must "
                               "serve the same repository")
        self.config = self.config or config
        return httpclient.InferenceServerClient(url=at, connection_timeout=self.connect_timeout,
                                                network_timeout=self.timeout)

    def _not_ready(self, client, at: str) -> str:
        if self.version:  # the model's metadata (an open API) lists the versions it serves
            try:
                versions = [str(v) for v in client.get_model_metadata(self.model).get("versions", [])]
            except Exception:  # noqa: BLE001 - no such model: said below
                versions = []
            if versions:
                return (f"triton: version {self.version} of model {self.model!r} is not served on {at} (ready "
                        f"versions: {', '.join(versions)}); drop the version from the URL or name one of those")
        try:
            index = client.get_model_repository_index()
        except Exception:  # noqa: BLE001 - the repository API is restricted (runtime.serve): no list to show
            return f"triton: model {self.model!r} is not ready on {at}"
        ready = sorted({m.get("name") for m in index if m.get("state") == "READY"})
        return f"triton: model {self.model!r} is not ready on {at} (ready: {', '.join(ready) or 'none'})"

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
        start = self.endpoints.index(self.active)
        order = self.endpoints[start:] + self.endpoints[:start]
        failures = []
        for endpoint in order:
            try:
                out = self._infer_at(endpoint, inputs, what)
            except _Unanswered as e:  # this replica did not answer: the next one gets the same batch
                failures.append(str(e))
                continue
            if endpoint != self.active:
                self.active, self.failovers = endpoint, self.failovers + 1
            if out is None or out.shape != images.shape:
                raise BackendError(f"triton: {self.at(endpoint)} returned {None if out is None else list(out.shape)} "
                                   f"for {what}, expected {list(images.shape)}")
            return InferResult(enhanced=out.astype(np.float32, copy=False))
        if len(failures) == 1:
            raise BackendError(failures[0])
        raise BackendError(f"triton: no replica of {self.where} answered {what}; nothing was returned for it:\n  "
                           + "\n  ".join(failures))

    def _infer_at(self, endpoint, inputs, what: str):
        """The output from one replica; BackendError for a bad request (4xx: no other replica would take it),
        _Unanswered when it did not answer (unreachable, dropped, 5xx)."""
        http, where = self._httpclient, f"triton://{self.at(endpoint)}/{self.model}"
        try:
            if endpoint not in self.clients:
                self.clients[endpoint] = self._connect(endpoint)
            result = self.clients[endpoint].infer(self.model, inputs, model_version=self.version,
                                                  outputs=[http.InferRequestedOutput(OUTPUT_ENHANCED, binary_data=True)])
            return result.as_numpy(OUTPUT_ENHANCED)
        except self._server_error as e:
            status = str(e.status() or "")
            message = (f"triton: {where} failed {what}: {e.message() or e}"
                       f"{f' (HTTP {status})' if status else ''}")
            if status.startswith("4"):
                raise BackendError(message) from e
            raise _Unanswered(message) from e
        except BackendError as e:  # a replica that is not ready or configured differently
            raise _Unanswered(str(e)) from e
        except Exception as e:  # noqa: BLE001 - the connection dropped (server killed), timed out, ...
            stale = self.clients.pop(endpoint, None)
            if stale is not None:
                stale.close()
            raise _Unanswered(f"triton: {where} did not answer {what} ({type(e).__name__}: {e}); nothing was "
                              "returned for it") from e

    def _describe(self) -> BackendInfo:
        params = model_parameters(self.config)
        kind = self.config.get("platform") or self.config.get("backend") or "?"
        return BackendInfo(
            name=self.name,
            device=f"{self.where} ({kind})",
            precision=Provenance.from_strings(params).precision or "as served",
            max_hw=configured_max_hw(self.config),
            larger="write the repository with a larger --max-size (python -m export.triton) and restart the server",
            max_batch=int(self.config.get("max_batch_size", 0)) or None,
            extra={"url": self.where, "served_by": kind, "dynamic_batching": "dynamic_batching" in self.config,
                   "instances": [g.get("count") for g in self.config.get("instance_group", [])]},
        )

    def _close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients = {}


class _Unanswered(BackendError):
    """A replica did not answer a batch (another one may)."""
