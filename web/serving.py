"""The serving layer of the web processes: slow clients never hold a worker thread.

gunicorn manages the processes; each runs a uvicorn worker (an asyncio event loop, httptools
parser) that reads every request — its headers and then its whole body — without a thread. Only
a complete request is handed to a thread of the Flask app (a2wsgi's WSGI bridge). gunicorn's
threaded workers gave each connection a thread that blocked reading headers, so 80 connections
trickling headers stopped the API; here they cost a socket and a few kilobytes each.

Bodies are bounded twice while they are read, before any route (or authentication) sees them: by the
route's own limit, decided where the app is wired (web.app.body_limit: 1 MiB, more only for the batch
endpoint), and by a cap on the bytes one worker holds at once across all its requests
(WEB_MAX_BUFFERED_BYTES, default 64 MiB), so unfinished bodies cannot grow a worker without bound.

Server-generated refusals use the API's JSON error envelope: 400 for a request that does not
parse, 414 for an over-long request line, 431 for oversized headers, 413 for a body over its route's
limit, 503 when the worker's buffers are full (retry shortly), 408 when headers or a body do not
arrive in time (WEB_HEADER_TIMEOUT_SECONDS, WEB_BODY_TIMEOUT_SECONDS).
"""
from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Callable
from typing import Any, cast

from a2wsgi import WSGIMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from billing_core.bootstrap import settings

MAX_TARGET_BYTES = 8 * 1024  # path and query
MAX_HEADER_BYTES = 32 * 1024  # all header names and values
DEFAULT_BODY_BYTES = 1024 * 1024  # a route's body limit unless the app says otherwise
LINGER_SECONDS = 2  # after refusing a request: how long its input is still read (and dropped)

Scope = dict[str, Any]


def _envelope(code: str, message: str) -> bytes:
    return json.dumps({"success": False, "error": {"code": code, "message": message, "details": {}}}).encode()


class _LingeringClose:
    """The protocol's transport, but closing it while the request's body is still arriving (a body
    refused for its size, or the worker's buffers full) closes as JsonErrorsProtocol._close_with does,
    lingering, so the answer is not destroyed by the reset unread input would cause."""

    def __init__(self, transport: Any, protocol: JsonErrorsProtocol):
        self._transport, self._protocol = transport, protocol

    def close(self) -> None:
        cycle = self._protocol.cycle
        if cycle is not None and cycle.more_body and not self._protocol._lingering:
            self._protocol._linger()
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class JsonErrorsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout (uvicorn has none: a connection trickling
    header lines would stay open for ever), answering a request it cannot parse, or whose headers
    do not arrive in time, with the JSON envelope instead of plain text, and closing lingering after
    an answer given before the request's body was read."""

    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0  # received while the current request's headers are incomplete
    _lingering = False  # answered and half-closed: what still arrives is read and dropped

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        # httptools keeps any amount of header bytes: past the limits (and then some) the request
        # cannot be served, so it is refused before more is held in memory. Counted after parsing:
        # one read may carry the headers and the start of a large body (a POST /charges batch on a
        # fresh connection), and only a read that leaves the headers still incomplete is all header.
        counting = self._header_timer is not None
        super().data_received(data)
        if counting and self._header_timer is not None and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > MAX_TARGET_BYTES + MAX_HEADER_BYTES + 4096:
                self._cancel_header_timer()
                self._close_with(431, b"Request Header Fields Too Large", _envelope(
                    "headers_too_large", f"the request headers are larger than {MAX_HEADER_BYTES} bytes"))

    def connection_made(self, transport: Any) -> None:
        super().connection_made(cast(asyncio.Transport, _LingeringClose(transport, self)))
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # the next request on a kept-alive connection
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def _arm_header_timer(self) -> None:
        # a request's headers must be complete this long after its first byte (or after the connection opens)
        self._header_timer = self.loop.call_later(settings().web_header_timeout_seconds, self._headers_late)

    def _cancel_header_timer(self) -> None:
        self._header_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._close_with(408, b"Request Timeout", _envelope(
                "request_timeout", f"the request headers did not arrive within {settings().web_header_timeout_seconds:g} s"))

    def send_400_response(self, msg: str) -> None:
        self._close_with(400, b"Bad Request", _envelope("validation_error", "invalid HTTP request"))

    def _close_with(self, status: int, reason: bytes, body: bytes) -> None:
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n" % (status, reason, len(body)) + body)
        self._linger()

    def _linger(self) -> None:
        """A lingering close, as nginx does: closing a socket with unread input makes the kernel send
        a reset, which can destroy the answer before the client reads it (a client still sending
        headers or a body always has input in flight). So: send the answer and a FIN, drop what
        still arrives for a moment (reading again if flow control had paused it), then close."""
        self._cancel_header_timer()
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.transport.resume_reading()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


class Worker(UvicornWorker):
    """gunicorn's worker class for the API: an event loop per process (uvloop, httptools)."""

    CONFIG_KWARGS = {"loop": "auto", "http": "web.serving:JsonErrorsProtocol", "lifespan": "off"}


Refusal = tuple[int, str, str]


def _refusal(status: int, code: str, message: str) -> tuple[dict, dict]:
    body = _envelope(code, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    start = {"type": "http.response.start", "status": status, "headers": headers}
    return start, {"type": "http.response.body", "body": body}


class BufferedRequests:
    """ASGI in front of the WSGI app: checks the request's size, reads the whole body on the event
    loop (bounded by the route's limit, the worker's cap and time), then runs the app in a thread
    with the body in memory."""

    def __init__(self, wsgi_app: Any, threads: int, body_limit: Callable[[str, str], int] | None = None,
                 max_buffered: int | None = None, body_timeout_seconds: int | None = None):
        self.app = WSGIMiddleware(wsgi_app, workers=threads)
        self.body_limit = body_limit or (lambda method, path: DEFAULT_BODY_BYTES)
        self.max_buffered = max_buffered or settings().web_max_buffered_bytes
        self.body_timeout_seconds = body_timeout_seconds or settings().web_body_timeout_seconds
        self.buffered = 0  # bytes of request bodies this worker holds now (one event loop: no lock)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        limit = self.body_limit(scope["method"], scope["path"])
        held = 0
        try:
            refused = self._oversized(scope, limit)
            if refused is None:
                body, refused = await self._read_body(receive, limit)
                held = len(body) if body is not None else 0
            if refused is not None:
                for message in _refusal(*refused):
                    await send(message)
                return
            if body is None:  # the client went away
                return
            await self._run(scope, receive, send, body)
        finally:
            self.buffered -= held

    async def _run(self, scope: Scope, receive: Any, send: Any, body: bytes) -> None:
        replay: list[dict] = [{"type": "http.request", "body": body, "more_body": False}]
        started = False

        async def buffered() -> dict:
            return replay.pop() if replay else await receive()

        async def sending(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(cast(Any, scope), cast(Any, buffered), cast(Any, sending))
        except Exception:
            # the app answers its own errors; this is the bridge failing: still the envelope
            if started:
                raise
            for message in _refusal(500, "internal_error", "internal error"):
                await send(message)

    @staticmethod
    def _oversized(scope: Scope, limit: int) -> Refusal | None:
        if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > MAX_TARGET_BYTES:
            return 414, "uri_too_long", f"the request target is longer than {MAX_TARGET_BYTES} bytes"
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            return 431, "headers_too_large", f"the request headers are larger than {MAX_HEADER_BYTES} bytes"
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), b"0")
        if declared.isdigit() and int(declared) > limit:
            return 413, "payload_too_large", f"the body is larger than {limit} bytes"
        return None

    async def _read_body(self, receive: Any, limit: int) -> tuple[bytes | None, Refusal | None]:
        """The whole body, counted in the worker's buffered bytes as it arrives. A body returned is the
        caller's to give back; a refused or abandoned one is given back here."""
        chunks, held = [], 0
        try:
            async with asyncio.timeout(self.body_timeout_seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None, None
                    chunk = message.get("body", b"")
                    if held + len(chunk) > limit:
                        return None, (413, "payload_too_large", f"the body is larger than {limit} bytes")
                    if self.buffered + len(chunk) > self.max_buffered:
                        return None, (503, "unavailable",
                                      "this server is reading too many request bodies at once; retry shortly")
                    self.buffered += len(chunk)
                    held += len(chunk)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        held = 0  # handed over
                        return b"".join(chunks), None
        except TimeoutError:
            return None, (408, "request_timeout", f"the body did not arrive within {self.body_timeout_seconds:g} s")
        finally:
            self.buffered -= held


def asgi_app(app_factory: str = "web.app:create_app") -> BufferedRequests:
    """gunicorn's application (`web.serving:asgi_app()`), built in each worker process from the process's
    settings; the bench names another factory (`web.serving:asgi_app('bench.naive:create_app')`)."""
    from web.app import body_limit

    module, _, name = app_factory.partition(":")
    create_app = getattr(importlib.import_module(module), name)
    return BufferedRequests(create_app({"LAD_SETTINGS": settings()}), threads=settings().web_threads,
                            body_limit=body_limit)
