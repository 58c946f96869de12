"""Real local receivers for notification tests: an HTTP webhook receiver (http.server in a thread)
and an SMTP server (aiosmtpd). Both bind 127.0.0.1 on a free port (or a given one)."""
from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from devstack.servers import free_port
from tests.support.polling import eventually


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered


class WebhookReceiver:
    """Answers POSTs with the scripted statuses in order, then with `then` forever; keeps every
    request. Use as a context manager or call start()/stop()."""

    def __init__(self, statuses: list[int] | None = None, then: int = 200,
                 headers: dict[str, str] | None = None):
        self._script = list(statuses or [])
        self._then = then
        self._extra_headers = headers or {}
        self._lock = threading.Lock()
        self.requests: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    status = receiver._script.pop(0) if receiver._script else receiver._then
                    receiver.requests.append(Received(self.path, dict(self.headers.items()), body, status))
                answer = b'{"received": true}' if status < 300 else b'{"error": "scripted failure"}'
                self.send_response(status)
                for name, value in receiver._extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/lad"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def wait_for(self, count: int, timeout: int = 60) -> list[Received]:
        """Poll until at least `count` requests arrived."""
        return eventually(lambda: got if len(got := self.received()) >= count else None, timeout, 0.05,
                          what=f"{count} webhook requests")


class SmtpInbox:
    """A real SMTP server (aiosmtpd) that keeps every message it accepts.

    Interface (the `smtp_inbox` fixture returns one):
      url: "smtp://127.0.0.1:<port>" (what SMTP_URL must be), host, port
      messages() -> list[EmailMessage] (each with .envelope_to: the RCPT TO addresses)
      wait_for(predicate, timeout=60) -> EmailMessage: the first message matching, polling
      replies: list[str] — scripted replies to DATA (e.g. "550 5.1.1 no such user"), used in order
               before answering "250 OK"
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1"):
        from aiosmtpd.controller import Controller

        self.host, self.port = host, port or free_port()
        self.replies: list[str] = []
        self._messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        inbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, N802
                with inbox._lock:
                    if inbox.replies:
                        return inbox.replies.pop(0)
                    message = email.message_from_bytes(envelope.original_content or envelope.content,
                                                       policy=email.policy.default)
                    message.envelope_to = list(envelope.rcpt_tos)  # type: ignore[attr-defined]
                    inbox._messages.append(message)  # type: ignore[arg-type]
                return "250 OK message accepted"

        self._controller = Controller(Handler(), hostname=host, port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> SmtpInbox:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpInbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, predicate: Callable[[EmailMessage], bool], timeout: int = 60) -> EmailMessage:
        return eventually(lambda: next((m for m in self.messages() if predicate(m)), None), timeout, 0.05,
                          what=f"a matching e-mail ({len(self.messages())} received so far)")
