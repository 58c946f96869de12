"""A local HTTP proxy (127.0.0.1) in front of the test stack that injects faults on request: it drops
the connection (before or after passing the request on), or answers 503 or 429 itself, then passes
requests through. The client libraries' retry tests run through it.

Faults are set per test, in order, for requests whose path ends with a given suffix: from Python with
`plan(...)`, from another process with `POST /__proxy/plan {"faults": [...]}`; `GET /__proxy/log` (or
`.log`) lists what every request met, with its Idempotency-Key.
"""
from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
              "content-length", "host"}

# drop: close without answering, the service never saw it; forward_then_drop: the service did it, the
# client never hears; forward_then_503: the service did it, the client hears 503; 503 / 429: answered here
ACTIONS = {"drop", "forward_then_drop", "forward_then_503", "503", "429"}


class FaultProxy:
    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self.upstream_host, self.upstream_port = target.hostname, target.port
        self.lock = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self.log: list[dict[str, Any]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.handle_any()

            def do_POST(self) -> None:
                self.handle_any()

            def do_PUT(self) -> None:
                self.handle_any()

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path.startswith("/__proxy/"):
                    return self.control(body)
                action = proxy.take_fault(self.command, self.path)
                with proxy.lock:
                    proxy.log.append({"method": self.command, "path": self.path.split("?")[0], "action": action,
                                      "idempotencyKey": self.headers.get("Idempotency-Key"),
                                      "userAgent": self.headers.get("User-Agent")})
                if action == "drop":
                    self.close_connection = True
                    return
                if action in ("503", "429"):
                    code = "unavailable" if action == "503" else "rate_limited"
                    headers = {"Retry-After": "1"} if action == "429" else {}
                    return self.answer(int(action), {"success": False, "error": {
                        "code": code, "message": "injected by the test proxy", "details": {}}}, headers)
                status, headers, content = proxy.forward(self.command, self.path, self.headers, body)
                if action == "forward_then_drop":
                    self.close_connection = True
                    return
                if action == "forward_then_503":
                    return self.answer(503, {"success": False, "error": {
                        "code": "unavailable", "message": "injected after forwarding", "details": {}}}, {})
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def answer(self, status: int, payload: Any, headers: dict[str, str]) -> None:
                content = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def control(self, body: bytes) -> None:
                if self.path.startswith("/__proxy/plan"):
                    proxy.plan(*json.loads(body or b"{}").get("faults", []))
                    return self.answer(200, {"ok": True}, {})
                with proxy.lock:
                    return self.answer(200, {"log": list(proxy.log)}, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def plan(self, *faults: dict[str, Any]) -> None:
        """Replace the faults (and clear the log): each {"path": suffix, "action": ..., "method"?: ...}
        applies once, to the next matching request, in order."""
        for fault in faults:
            assert fault["action"] in ACTIONS, fault
        with self.lock:
            self.faults = [dict(f) for f in faults]
            self.log = []

    def requests(self, path_suffix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [entry for entry in self.log if entry["path"].endswith(path_suffix)]

    def take_fault(self, method: str, path: str) -> str:
        bare = path.split("?")[0]
        with self.lock:
            for index, fault in enumerate(self.faults):
                if bare.endswith(fault["path"]) and fault.get("method", method) == method:
                    del self.faults[index]
                    return fault["action"]
        return "pass"

    def forward(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(method, path, body=body or None, headers=sent)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()
