"""The webhook SSRF guard and what a failed delivery records, without the stack: non-public addresses
refused, the host resolved once and the checked address the one connected, failing closed; at most 200
bytes of a refusal kept, never its headers."""
from __future__ import annotations

import ipaddress
import socket
import threading

from tests.support.receivers import WebhookReceiver


def test_non_public_addresses_are_refused_including_nat64_6to4_multicast_and_reserved():
    from billing_core.notifications.destinations import is_public

    for address in ("127.0.0.1", "10.0.0.1", "169.254.169.254", "100.64.0.1", "224.0.0.1", "240.0.0.1",
                    "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1",
                    "64:ff9b:1::a00:1", "2002:7f00:1::1", "ff02::1", "255.255.255.255"):
        assert not is_public(ipaddress.ip_address(address)), address
    for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"):
        assert is_public(ipaddress.ip_address(address)), address


def test_the_guard_is_on_by_default_and_fails_closed_on_lookup_errors(monkeypatch):
    from billing_core.notifications import outbox

    monkeypatch.delenv("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", raising=False)
    monkeypatch.delenv("LAD_ENV", raising=False)  # development: on all the same
    refused = outbox.post_webhook("http://127.0.0.1:9/hook", b"{}", {}, 1)
    assert not refused.ok and not refused.retryable and "non-public" in refused.error

    def failing_lookup(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", failing_lookup)
    result = outbox.post_webhook("http://hooks.example.test/x", b"{}", {}, 1)
    assert not result.ok and "could not be resolved" in result.error


def test_the_host_is_resolved_once_and_the_checked_address_is_the_one_connected(monkeypatch):
    from billing_core.notifications import outbox

    real_lookup, lookups = socket.getaddrinfo, []

    def rebinding(host, port, *args, **kwargs):
        try:
            ipaddress.ip_address(host)
            return real_lookup(host, port, *args, **kwargs)  # a numeric address: no DNS
        except ValueError:
            lookups.append(host)
        # first answer: the receiver; any later lookup would point somewhere else entirely
        target = "127.0.0.1" if len(lookups) == 1 else "10.255.255.1"
        return real_lookup(target, port, *args, **kwargs)

    with WebhookReceiver([500], then=200) as receiver:
        port = int(receiver.url.split(":")[2].split("/")[0])
        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        result = outbox.post_webhook(f"http://rebind.example.test:{port}/hooks/lad", b"{}",
                                            {"Content-Type": "application/json"}, 5,
                                            allow_private_addresses=True)  # the receiver is local
        monkeypatch.setattr(socket, "getaddrinfo", real_lookup)
        got = receiver.received()
    assert lookups == ["rebind.example.test"]
    assert len(got) == 1 and got[0].headers["Host"] == f"rebind.example.test:{port}"
    assert result.http_status == 500 and "Content-Type" not in result.error


def test_a_failure_record_keeps_the_status_and_at_most_200_bytes_never_headers(monkeypatch):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from billing_core.notifications import outbox


    class Loud(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"secret-body-" + b"y" * 1000
            self.send_response(400)
            self.send_header("X-Internal-Token", "hunter2")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Loud)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = outbox.post_webhook(f"http://127.0.0.1:{server.server_address[1]}/h", b"{}", {}, 5,
                                     allow_private_addresses=True)  # the receiver is local
    finally:
        server.shutdown()
        server.server_close()
    assert result.http_status == 400 and not result.retryable
    excerpt = result.error.removeprefix("HTTP 400: ")
    assert excerpt.startswith("secret-body-") and len(excerpt.encode()) <= 200
    assert "hunter2" not in result.error and "X-Internal-Token" not in result.error


def test_webhooks_to_private_addresses_are_refused_unless_allowed(monkeypatch):
    from billing_core.bootstrap import Settings
    from billing_core.notifications import outbox

    monkeypatch.delenv("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", raising=False)  # on in every environment
    guarded = outbox.NotificationSettings.of(Settings())
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/x"):
        result = outbox.post_webhook(url, b"{}", {}, 1, allow_private_addresses=guarded.allow_private_addresses)
        assert not result.ok and not result.retryable and "non-public" in result.error, url
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", "true")
    allowed = outbox.NotificationSettings.of(Settings())
    assert "non-public" not in (outbox.post_webhook("http://127.0.0.1:9/hook", b"{}", {}, 1,
                                                    allow_private_addresses=allowed.allow_private_addresses).error or "")
