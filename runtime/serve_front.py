"""The launcher's HTTP front end: listens on the public port, refuses what Triton 2.51 cannot bound, forwards the
rest to Triton on a loopback port.

Why: Triton 2.51 (the newest server any package here ships) allocates what a request declares before the model
sees it, inflates gzip/deflate bodies in full, reads any body size, and crashed (SIGSEGV) on one request of 600,000
one-byte chunks (CVE-2025-23310/23311, fixed in 2.59); it has no option against any of these (README "Security").
Built on aiohttp (its HTTP parser is llhttp, Node's; nothing is parsed by hand here but the small JSON header of an
inference request). Refused before the body is read, the connection then closed (nothing of it is drained):

- a body with ``Transfer-Encoding`` (chunked) or without Content-Length (411), a ``Content-Encoding`` other than
  identity (415), a body above the largest legal request of that model (413: ``serve_bounds``);
- an inference request whose declared inputs exceed the model's max batch, its largest image (``max_hw``) or its
  datatypes, or whose binary tensors do not add up to the body (400; ``serve_bounds.check_request``);
- paths outside Triton's HTTP/REST API as this launcher serves it: the generate extension, unknown POST paths,
  methods other than GET and POST, percent-encoded or unusual characters in the path (404/405/400).

Everything else (health, metadata, model configuration, and the admin APIs, which Triton itself restricts to the
key holder) is forwarded with only the headers Triton needs. While ``unhealthy`` is set (a Python stub died),
readiness answers 503. The server runs on its own event loop in a daemon thread of the launcher.
"""
from __future__ import annotations

import asyncio
import json
import re
import threading

from .serve_bounds import ADMIN_BODY_LIMIT, JSON_HEADER_LIMIT, ModelBounds, check_request

INFER = re.compile(r"^/v2/models/([A-Za-z0-9_.-]+)(?:/versions/[0-9]+)?/infer$")
READY = re.compile(r"^/v2/health/ready$|^/v2/models/[A-Za-z0-9_.-]+(?:/versions/[0-9]+)?/ready$")
# The admin POSTs (Triton answers them only with the key): repository, shared memory, logging, trace.
ADMIN_POST = re.compile(r"^/v2/(?:repository/index|repository/models/[A-Za-z0-9_.-]+/(?:load|unload)"
                        r"|(?:system|cuda)sharedmemory(?:/region/[A-Za-z0-9_.-]+)?/(?:register|unregister)"
                        r"|logging|trace/setting|models/[A-Za-z0-9_.-]+(?:/versions/[0-9]+)?/trace/setting)$")
PATH_CHARS = re.compile(r"^/[A-Za-z0-9_./-]*$")
FORWARDED = ("Content-Type", "Inference-Header-Content-Length")  # plus the admin header, when given
RETURNED = ("Content-Type", "Inference-Header-Content-Length")
BUFFER_LIMIT = 4 << 20  # bodies up to this are read whole (one write to Triton); larger ones are streamed
STREAM_CHUNK = 1 << 20


class FrontEnd:
    """``FrontEnd(bounds, backend_port, admin_header).start(address, port)``; ``stop()``. ``bounds``: model name ->
    ModelBounds of every model served."""

    def __init__(self, bounds: dict[str, ModelBounds], backend_port: int, admin_header: str):
        self.bounds, self.backend = bounds, f"http://127.0.0.1:{backend_port}"
        self.forwarded = FORWARDED + (admin_header,)
        self.unhealthy: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._runner = self._session = None

    # --- lifecycle (called from the launcher's threads) ---------------------------------------------------------

    def start(self, address: str, port: int, timeout: float = 30.0) -> None:
        """Listen on address:port; OSError (e.g. the port is taken) is raised here."""
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._start(address, port))
            except BaseException as e:  # noqa: BLE001 - handed to start()
                failure.append(e)
                started.set()
                self.loop.close()
                return
            started.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self._stop())
            self.loop.close()

        self.thread = threading.Thread(target=run, name="codeenhance-front-end", daemon=True)
        self.thread.start()
        if not started.wait(timeout):
            raise OSError(f"the front end did not start within {timeout:g} s")
        if failure:
            raise failure[0]

    def stop(self, timeout: float = 10.0) -> None:
        if self.thread is not None and self.thread.is_alive() and self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
        self.thread = None

    async def _start(self, address: str, port: int) -> None:
        from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

        # lingering_time 0: a refused body is not drained (the connection closes); auto_decompress off: a
        # compressed body is never inflated, even by mistake; keep-alive bounded.
        server = web.Server(self.handle, lingering_time=0, auto_decompress=False, keepalive_timeout=75,
                            access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, address, port).start()  # SO_REUSEADDR: a restart need not wait for TIME_WAIT
        except BaseException:
            await self._runner.cleanup()
            raise
        # No default Accept-Encoding: Triton would compress answers for nobody; no read timeout: a large batch on
        # CPU takes as long as it takes (the client has its own timeout).
        self._session = ClientSession(connector=TCPConnector(limit=256), auto_decompress=False,
                                      skip_auto_headers=("Accept-Encoding", "User-Agent"),
                                      timeout=ClientTimeout(total=None, connect=10))

    async def _stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- requests -----------------------------------------------------------------------------------------------

    @staticmethod
    def refuse(status: int, message: str, close: bool = True):
        from aiohttp import web

        response = web.json_response({"error": message}, status=status)
        if close:  # the body (if any) was not read: this connection cannot carry another request
            response.force_close()
        return response

    async def handle(self, request):
        try:
            return await self.route(request)
        except (asyncio.IncompleteReadError, ConnectionError):  # the client went away mid-body
            return self.refuse(400, "the body ended before its Content-Length")

    async def route(self, request):
        path = request.raw_path.split("?", 1)[0]  # the same string is matched and forwarded
        method = request.method
        if not PATH_CHARS.match(path) or "//" in path or "/." in path:
            return self.refuse(400, "unsupported characters in the path")
        if method not in ("GET", "POST"):
            return self.refuse(405, f"method {method[:10]} is not supported")
        if "Transfer-Encoding" in request.headers:
            return self.refuse(411, "chunked request bodies are refused: send the body with a Content-Length")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            return self.refuse(415, "compressed request bodies are refused: send them uncompressed")
        length = request.content_length
        if method == "GET":
            if length:
                return self.refuse(400, "a GET request takes no body")
            if self.unhealthy and READY.match(path):
                return self.refuse(503, f"not ready: {self.unhealthy}", close=False)
            return await self.forward(request, path, b"")
        if length is None:
            return self.refuse(411, "a POST body needs a Content-Length")
        infer = INFER.match(path)
        if infer:
            return await self.infer(request, path, infer.group(1), length)
        if not ADMIN_POST.match(path):
            return self.refuse(404, "not found (this server takes inference, health, metadata, configuration and "
                                    "the admin APIs)")
        if length > ADMIN_BODY_LIMIT:
            return self.refuse(413, f"body of {length} bytes is above the {ADMIN_BODY_LIMIT} this API takes")
        return await self.forward(request, path, await request.content.readexactly(length))

    async def infer(self, request, path: str, model: str, length: int):
        bounds = self.bounds.get(model)
        if bounds is None:
            return self.refuse(404, f"unknown model: {model[:64]!r} is not served here (served: "
                                    f"{', '.join(self.bounds)})")
        if length > bounds.max_body:
            return self.refuse(413, f"body of {length} bytes is above the largest legal request for model "
                                    f"{model!r} ({bounds.max_body} bytes: max batch x largest image, binary)")
        declared = request.headers.get("Inference-Header-Content-Length")
        if declared is None:
            header_length = length  # all JSON
            if length > JSON_HEADER_LIMIT:
                return self.refuse(413, f"a JSON request is limited to {JSON_HEADER_LIMIT} bytes; send the "
                                        "tensors as binary data (tritonclient's default)")
        else:
            most = min(length, JSON_HEADER_LIMIT)
            if not declared.isdigit() or not 0 < int(declared) <= most:
                return self.refuse(400, f"Inference-Header-Content-Length must be a number in 1..{most}")
            header_length = int(declared)
        raw = await request.content.readexactly(header_length)
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError):
            return self.refuse(400, "the request's JSON header cannot be parsed")
        problem = check_request(bounds, header, length, header_length)
        if problem:
            return self.refuse(400, f"{model}: {problem}")
        rest = length - header_length
        if length <= BUFFER_LIMIT:
            return await self.forward(request, path, raw + await request.content.readexactly(rest))

        async def stream():
            yield raw
            left = rest
            while left:
                chunk = await request.content.readexactly(min(left, STREAM_CHUNK))
                left -= len(chunk)
                yield chunk

        return await self.forward(request, path, stream(), length)

    async def forward(self, request, path: str, body, length: int | None = None):
        from aiohttp import ClientError, web

        headers = {k: request.headers[k] for k in self.forwarded if k in request.headers}
        headers["Accept-Encoding"] = "identity"
        if length is not None:
            headers["Content-Length"] = str(length)  # streamed: sent as is, never chunked
        response = None
        try:
            async with self._session.request(request.method, self.backend + path, data=body or None,
                                             headers=headers) as answer:
                returned = {k: answer.headers[k] for k in RETURNED if k in answer.headers}
                size = answer.content_length
                if size is not None and size <= BUFFER_LIMIT:
                    return web.Response(status=answer.status, body=await answer.read(), headers=returned)
                response = web.StreamResponse(status=answer.status, headers=returned)
                if size is not None:
                    response.content_length = size
                await response.prepare(request)
                async for chunk in answer.content.iter_chunked(STREAM_CHUNK):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (ClientError, asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            if response is not None:  # part of the answer went out: only closing the connection tells the client
                if request.transport is not None:
                    request.transport.close()
                return response
            # The server went away mid-request (killed, stopped), or the client's body ended early.
            return self.refuse(502, "the inference server did not answer this request")
