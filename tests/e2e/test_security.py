"""Issue 15 (security review) and issue 9 item 3, one test or more per numbered finding:

1. slow clients do not stop the API;            2. billing.manage is a tenant's own administrator;
3. tokens meant for billing (aud, lifetime, sub, secret length);
4. bounded work per request (metadata, items, batches counted as events);
5. /metrics bounded and not public;             6. the SSRF guard (resolve once, pinned, fail closed);
7. the small ones (fullmatch ids, entitlement scope, CSV formulas, hide_parameters, Stripe numbers,
   414/431 in the JSON envelope);
and usage is never dropped: 500 concurrent charges against funds for 300, no 429.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import random
import re
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
import requests
from sqlalchemy import text

from tests.support.helpers import Api, stt_items, top_up, wait_until_settled, wallet
from tests.support.receivers import WebhookReceiver
from tests.support.stack import TEST_SECRET

B = "/api/billing"


def _charge(api: Api, token: str, **extra) -> dict:
    return {"featureKey": "f", "items": stt_items("100"), **extra}


# --- 1: slow clients -------------------------------------------------------------------------------


def test_200_slow_clients_trickling_headers_and_bodies_do_not_stop_the_api(live, tokens):
    top_up(live.api, tokens["admin"], "5")
    port, stop = live.port, threading.Event()
    slow: list[socket.socket] = []
    for index in range(200):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        if index % 2:  # headers that never end
            connection.sendall(b"POST /api/billing/charge HTTP/1.1\r\nHost: a\r\n")
        else:  # a body that never arrives
            connection.sendall(b"POST /api/billing/charge HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 100000\r\n\r\n{")
        slow.append(connection)

    def trickle() -> None:
        while not stop.wait(0.5):
            for index, connection in enumerate(slow):
                try:
                    connection.sendall(b"X-Slow: 1\r\n" if index % 2 else b" ")
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(1)
        fresh = Api(live.api.base_url)
        # each answer within 1 s: a request in a thread that a slow connection would hold would time out
        health = fresh.session.get(f"{live.api.base_url}/healthz", timeout=1)
        assert health.status_code == 200
        charge = fresh.session.post(f"{live.api.base_url}{B}/charge", json=_charge(fresh, tokens["charge"]),
                                    headers={"Authorization": f"Bearer {tokens['charge']}",
                                             "Prefer": "respond-async"}, timeout=1)
        assert charge.status_code == 202, charge.text
    finally:
        stop.set()
        trickler.join()
        for connection in slow:
            connection.close()


def test_a_client_whose_headers_never_end_is_cut_off_with_a_json_408(live):
    connection = socket.create_connection(("127.0.0.1", live.port), timeout=30)
    try:
        connection.sendall(b"POST /api/billing/charge HTTP/1.1\r\nHost: a\r\n")
        started, answer = time.monotonic(), b""
        while time.monotonic() - started < 25:
            try:
                connection.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            connection.settimeout(1)
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            answer += chunk
    finally:
        connection.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer  # the test stack's WEB_HEADER_TIMEOUT_SECONDS is 5


# --- 2: billing.manage ------------------------------------------------------------------------------


def test_a_manage_token_administers_its_own_tenants_settings_and_nothing_else(api, make_token, tenant):
    other = f"t-{uuid.uuid4().hex[:12]}"
    manage = make_token(tenant, "billing.manage")
    with WebhookReceiver() as sink:
        put = api.request("PUT", f"{B}/settings/alerts", manage, json={"thresholds": ["5"], "webhookUrl": sink.url})
        assert put.status_code == 200, put.text
        assert api.get(f"{B}/settings/alerts", manage).json()["alerts"]["webhookSecret"]
    budget = api.request("PUT", f"{B}/budgets/voice", manage, json={"limit": "10", "period": "month"})
    assert budget.status_code == 200, budget.text
    assert [b["featureKey"] for b in api.get(f"{B}/budgets", manage).json()["budgets"]] == ["voice"]
    assert api.request("DELETE", f"{B}/budgets/voice", manage).status_code == 200
    assert api.get(f"{B}/usage", manage).status_code == 200  # everything billing.view allows
    assert api.get(f"{B}/notifications", manage).status_code == 200

    # another tenant's settings: refused
    admin_b = make_token(other, "billing.admin")
    api.request("PUT", f"{B}/settings/alerts", admin_b, json={"thresholds": ["1"], "webhookUrl": "https://x.test/h"})
    assert api.get(f"{B}/settings/alerts?tenantId={other}", manage).status_code in (403, 404)
    assert api.request("PUT", f"{B}/settings/alerts", manage,
                       json={"thresholds": ["1"], "email": "a@b.test", "tenantId": other}).status_code in (403, 404)
    assert api.request("PUT", f"{B}/budgets/voice", manage,
                       json={"limit": "1", "period": "day", "tenantId": other}).status_code in (403, 404)
    assert api.get(f"{B}/notifications?operator=true", manage).status_code == 403
    # and never credits, prices, blocks or platform jobs
    key = str(uuid.uuid4())
    refused = [
        ("POST", f"{B}/topup", {"amount": "5", "idempotencyKey": key}),
        ("POST", f"{B}/refunds", {"transactionId": str(uuid.uuid4()), "reason": "r", "idempotencyKey": key}),
        ("POST", f"{B}/adjustments", {"amount": "5", "reason": "r", "idempotencyKey": key}),
        ("PUT", f"{B}/pricing", {"category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second",
                                 "unitPrice": "0", "tenantId": tenant}),
        ("PATCH", f"{B}/wallet", {"status": "blocked"}),
        ("POST", f"{B}/invoices/rollup?period=2020-01", None),
        ("GET", f"{B}/ledger/verify", None),
    ]
    for method, path, body in refused:
        response = api.request(method, path, manage, json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"]["code"] == "forbidden"
    assert wallet(api, manage)["currentBalance"] == "0"


# --- 3: tokens meant for billing ---------------------------------------------------------------------






def test_the_service_refuses_a_year_long_token_and_one_without_sub(api, tenant):
    now = int(time.time())
    year = jwt.encode({"sub": "u", "tenantId": tenant, "iat": now, "exp": now + 365 * 86400}, TEST_SECRET,
                      algorithm="HS256")
    no_sub = jwt.encode({"tenantId": tenant, "iat": now, "exp": now + 60}, TEST_SECRET, algorithm="HS256")
    newline = jwt.encode({"sub": "u", "tenantId": tenant + "\n", "exp": now + 60}, TEST_SECRET, algorithm="HS256")
    for token in (year, no_sub, newline):
        response = api.get(f"{B}/wallet", token)
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"


# --- 4: bounded work ---------------------------------------------------------------------------------


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def test_huge_or_deep_metadata_and_too_many_items_fail_only_their_event(api, tokens, engine, tenant):
    top_up(api, tokens["admin"], "10")
    events = [
        _charge(api, "", metadata={"blob": "x" * (17 * 1024)}),
        _charge(api, "", metadata=_nested(33)),
        _charge(api, "", metadata=_nested(300)),  # was a 500 that sank the whole batch
        {"featureKey": "f", "items": stt_items("1") * 101},
        _charge(api, "", metadata=_nested(32) | {"note": "x" * 1000}),
    ]
    response = api.post(f"{B}/charges", tokens["charge"], json={"events": events})
    assert response.status_code == 202, response.text[:300]
    results = response.json()["results"]
    for index in range(4):
        assert results[index]["error"]["code"] == "validation_error", results[index]
        assert results[index]["error"]["details"]["field"].startswith(f"events[{index}]."), results[index]
    assert "error" not in results[4] or results[4]["error"] is None, results[4]
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT count(*) FROM usage_events WHERE tenant_id = :t"),
                                    {"t": tenant}).scalar_one()
    assert stored == 1  # refused before anything was stored
    single = api.post(f"{B}/charge", tokens["charge"], json=_charge(api, "", metadata=_nested(300)))
    assert single.status_code == 400 and single.json()["error"]["details"]["field"] == "metadata"


def test_a_batch_is_limited_to_10000_items_and_counts_as_its_events(api, tokens):
    many = [{"featureKey": "f", "items": stt_items("1") * 100} for _ in range(101)]
    response = api.post(f"{B}/charges", tokens["charge"], json={"events": many})
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "events"
    before = api.post(f"{B}/charges", tokens["charge"], json={"events": [_charge(api, "")]})
    after = api.post(f"{B}/charges", tokens["charge"], json={"events": [_charge(api, "")] * 50})
    assert before.status_code == after.status_code == 202
    spent = int(before.headers["X-RateLimit-Remaining"]) - int(after.headers["X-RateLimit-Remaining"])
    # the batch of 50 counted as 50 (older counts of the sliding window may fade by a few meanwhile)
    assert spent >= 45


# --- 5: metrics --------------------------------------------------------------------------------------


def _outward_address() -> str | None:
    """This machine's address other than loopback, if it has one (no packet is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if ipaddress.ip_address(address).is_loopback else address


def test_metrics_label_unknown_methods_other_and_are_not_public(live):
    for method in ("PROPFIND", "MKCOL", "SEARCH"):
        connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
        connection.request(method, f"{B}/wallet")
        connection.getresponse().read()
        connection.close()
    body = live.api.get("/metrics").text  # from loopback
    requests_lines = [line for line in body.splitlines() if line.startswith("lad_http_requests_total{")]
    assert any('method="other"' in line for line in requests_lines)
    assert not any(f'method="{m}"' in body for m in ("PROPFIND", "MKCOL", "SEARCH"))
    outward = _outward_address()
    if outward is None:
        pytest.skip("no non-loopback address to test /metrics from")
    remote = f"http://{outward}:{live.port}/metrics"
    refused = live.api.session.get(remote, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    allowed = live.api.session.get(remote, headers={"Authorization": f"Bearer {live.env['METRICS_TOKEN']}"},
                                   timeout=10)
    assert allowed.status_code == 200 and "lad_http_requests_total" in allowed.text


# --- 6: SSRF -----------------------------------------------------------------------------------------










# --- 7: the small ones -------------------------------------------------------------------------------


def test_entitlement_checks_spend_the_view_scope_not_the_charge_bucket(api, tokens):
    top_up(api, tokens["admin"], "5")
    first = api.post(f"{B}/charge?wait=0", tokens["charge"], json=_charge(api, ""))
    for _ in range(5):
        check = api.get(f"{B}/entitlement?featureKey=f&estimatedCost=1", tokens["charge"])
        assert check.status_code == 200
    second = api.post(f"{B}/charge?wait=0", tokens["charge"], json=_charge(api, ""))
    # the second charge counts, the checks do not (a window boundary may let an old count fade by one)
    assert 0 <= int(first.headers["X-RateLimit-Remaining"]) - int(second.headers["X-RateLimit-Remaining"]) <= 1






def test_a_signed_stripe_event_with_an_overflowing_number_is_a_400_and_stores_nothing(api, engine):
    from billing_core import exactjson
    from tests.support.stripe_events import post_raw, sign

    event_id = f"evt_{uuid.uuid4().hex}"
    for number in ("1e999999999", "NaN", "1e99999999999999999999"):
        event = exactjson.dumps({"id": event_id, "type": "payment_intent.succeeded", "data": {"object": {
            "id": "pi_1", "amount_received": "NUMBER", "currency": "usd", "metadata": {"tenantId": "acme"}}}})
        body = event.replace('"NUMBER"', number)  # raw text: no encoder writes these numbers
        response = post_raw(api, body, sign(body))
        assert response.status_code == 400, (number, response.text)
        assert response.json()["error"]["code"] == "validation_error"
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM stripe_events WHERE id = :i"),
                                  {"i": event_id}).scalar_one() == 0


def test_414_and_431_and_other_server_refusals_are_in_the_json_envelope(live):
    def raw(request: bytes) -> tuple[int, dict]:
        import json

        connection = socket.create_connection(("127.0.0.1", live.port), timeout=10)
        try:
            try:
                connection.sendall(request)
            except OSError:
                pass  # refused (and closed) before all of it was sent: read the answer
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
                    [h for h in data.split(b"\r\n") if h.lower().startswith(b"content-length:")][0].split(b":")[1]):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            connection.close()
        head, body = data.split(b"\r\n\r\n", 1)
        return int(head.split(b" ")[1]), json.loads(body)

    status, body = raw(b"GET /healthz?" + b"a" * 10000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 414 and body["success"] is False and body["error"]["code"] == "uri_too_long"
    status, body = raw(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 40000 + b"\r\n\r\n")
    assert status == 431 and body["error"]["code"] == "headers_too_large"
    status, body = raw(b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"b" * 8000 + b"\r\n" * 1
                       + b"".join(b"X-More-%d: %s\r\n" % (n, b"c" * 8000) for n in range(10)) + b"\r\n")
    assert status == 431 and body["error"]["code"] == "headers_too_large"  # refused while still arriving
    status, body = raw(b"POST /api/billing/charges HTTP/1.1\r\nHost: a\r\nContent-Length: 20000000\r\n\r\n")
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    status, body = raw(b"GET /healthz HTTP/1.1\r\nHost: a\r\nBad Header Line\r\n\r\n")
    assert status == 400 and body["error"]["code"] == "validation_error"


# --- issue 9 item 3: usage is never dropped ----------------------------------------------------------


def test_500_concurrent_charges_against_funds_for_300_are_all_recorded_and_none_is_429(live, tokens):
    top_up(live.api, tokens["admin"], "300")

    def charge(index: int) -> tuple[int, str | None]:
        client = Api(live.api.base_url)
        response = client.post(f"{B}/charge", tokens["charge"], headers={"Prefer": "respond-async"},
                               json={"featureKey": "f", "items": stt_items("10000"), "idempotencyKey": f"c-{index}"})
        return response.status_code, response.json().get("taskId")

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(charge, range(500)))
    assert [status for status, _ in answers].count(429) == 0
    assert {status for status, _ in answers} == {202}, {status for status, _ in answers}
    states = wait_until_settled(live.api, tokens["charge"], [task for _, task in answers], timeout=240)
    outcomes = [task["state"] for task in states.values()]
    assert (len(outcomes), outcomes.count("charged"), outcomes.count("rejected")) == (500, 300, 200)
    assert wallet(live.api, tokens["any"])["currentBalance"] == "0"


# --- issue 14's finding: every limit of a request in one Redis round trip ----------------------------


def test_all_rate_limits_of_a_request_cost_one_redis_round_trip(live, tokens):
    import redis

    client = redis.Redis.from_url(live.env["REDIS_URL"])

    def calls() -> dict[str, int]:
        return {name: stats["calls"] for name, stats in client.info("commandstats").items()}

    live.api.get(f"{B}/wallet", tokens["any"])  # the script is loaded
    before = calls()
    for _ in range(20):
        assert live.api.get(f"{B}/wallet", tokens["any"]).status_code == 200
    after = calls()
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    # one EVALSHA per request: the tenant's and the token's limit together, headers from its answer
    # (Flask-Limiter's moving window sent a script per limit and another for the headers: 3 or more).
    # Celery's own traffic on this Redis (LPUSH, BRPOP, ZADD) uses no scripts.
    assert 20 <= delta.get("cmdstat_evalsha", 0) < 40, delta


# --- issue 25 ----------------------------------------------------------------------------------------


class _FromAddress(requests.adapters.HTTPAdapter):
    """Connections from another loopback address (127.0.0.0/8 is all this machine's): the refusals of
    one test fill that address's bucket, not the one every other test shares."""

    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def _client_at(live, address: str) -> Api:
    client = Api(live.api.base_url)
    client.session.mount("http://", _FromAddress(address))
    return client


def _unique_loopback() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


def _remaining(response) -> int:
    assert response.status_code == 200, response.text
    return int(response.headers["X-RateLimit-Remaining"])


def test_refused_requests_never_spend_the_operators_or_the_managers_buckets(live, make_token, tenant):
    """Finding 2: a tenant's billing.view token sending POST /topup (403) counted in the bucket of the
    tenant it named, where the operator's own requests for that tenant counted too: 1,199 refusals and the
    operator got 429. Now a request counts in its own principal's buckets, once authenticated and
    allowed; refusals count in buckets of their own (per token, per address), which refuse a flood (429)."""
    api = live.api
    operator = make_token(f"ops-{uuid.uuid4().hex[:8]}", "billing.admin")
    manage = make_token(tenant, "billing.manage")

    def operator_topup():
        return api.post(f"{B}/topup", operator, json={"tenantId": tenant, "amount": "1",
                                                     "idempotencyKey": str(uuid.uuid4())})

    before = _remaining(operator_topup())
    flood = _client_at(live, _unique_loopback())
    view = make_token(tenant, "billing.view", sub="flooder")
    statuses = [flood.post(f"{B}/topup", view, json={"tenantId": tenant, "amount": "1",
                                                     "idempotencyKey": str(uuid.uuid4())}).status_code
                for _ in range(150)]
    # the refusals' own bucket per token (60 a minute by default) holds, then refuses the flood itself
    assert set(statuses[:50]) == {403} and statuses[-1] == 429, statuses
    refused = flood.post(f"{B}/topup", view, json={"amount": "1", "idempotencyKey": "x"})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) > 0
    assert before - _remaining(operator_topup()) <= 2, "the operator's bucket did not move"

    # the same for billing.manage routes, and for a refusal inside the route (naming another tenant)
    before = _remaining(api.request("PUT", f"{B}/budgets/flooded", manage, json={"limit": "1", "period": "day"}))
    view = make_token(tenant, "billing.view", sub="flooder-2")
    statuses = [flood.request("PUT", f"{B}/budgets/flooded", view, json={"limit": "1", "period": "day"}).status_code
                for _ in range(70)]
    assert statuses[0] == 403 and statuses[-1] == 429, statuses
    for _ in range(10):
        assert api.request("PUT", f"{B}/budgets/flooded", manage,
                           json={"limit": "1", "period": "day", "tenantId": f"{tenant}-x"}).status_code == 403
    assert before - _remaining(api.request("PUT", f"{B}/budgets/flooded", manage,
                                           json={"limit": "1", "period": "day"})) <= 3

    # many tokens from one address: its bucket (600 a minute) refuses them all past it
    other = _client_at(live, _unique_loopback())
    answers = [other.get(f"{B}/wallet", f"not-a-token-{index}").status_code for index in range(620)]
    assert answers[0] == 401 and answers[-1] == 429 and set(answers) == {401, 429}
    assert api.get(f"{B}/wallet", make_token(tenant)).status_code == 200  # other addresses are not refused


def test_a_body_over_its_routes_limit_is_refused_while_it_arrives(live, tokens):
    """Finding 5: every path read bodies up to 16 MiB before anything looked at them. Now 1 MiB unless the
    app says more for the route (POST /charges), refused as the bytes arrive."""
    def chunked(path: str, megabytes: int) -> tuple[int, bytes]:
        connection = socket.create_connection(("127.0.0.1", live.port), timeout=30)
        try:
            connection.sendall(f"POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                               "Content-Type: application/json\r\n\r\n".encode())
            piece = b" " * 65536
            try:
                for _ in range(megabytes * 16):
                    connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                connection.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # refused and closed before all of it was sent
            answer = b""
            while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                    re.search(rb"content-length: (\d+)", answer, re.I).group(1)):
                chunk = connection.recv(65536)
                if not chunk:
                    break
                answer += chunk
        finally:
            connection.close()
        return int(answer.split(b" ")[1]), answer

    status, answer = chunked("/healthz", 3)
    assert status == 413 and b"payload_too_large" in answer, answer[:300]
    status, answer = chunked(f"{B}/charge", 2)
    assert status == 413 and b"payload_too_large" in answer, answer[:300]
    # the batch endpoint takes more: 2 MiB of it reaches the route
    body = json.dumps({"events": [_charge(live.api, "")]}) + " " * (2 * 1024 * 1024)
    accepted = live.api.post(f"{B}/charges", tokens["charge"], data=body, headers={"Content-Type": "application/json"})
    assert accepted.status_code == 202, accepted.text[:300]




def test_links_and_redirects_name_the_public_address_never_the_host_header(live, tokens, make_token, tenant,
                                                                          monkeypatch):
    """Finding 7: LAD_PUBLIC_URL (in development http://localhost:PORT), never the request's Host."""
    public, base = live.env["LAD_PUBLIC_URL"], live.api.base_url
    evil = {"Host": "evil.example"}
    manage = make_token(tenant, "billing.manage")
    link = live.api.post(f"{B}/portal-sessions", manage, json={}, headers=dict(evil)).json()["portalSession"]["url"]
    assert link.startswith(f"{public}/portal/open?token="), link
    for path in ("/portal", "/console"):
        moved = requests.get(base + path, headers=evil, allow_redirects=False, timeout=30)
        assert moved.status_code in (301, 308) and moved.headers["Location"] == f"{public}{path}/", moved.headers
    opened = requests.get(base + link.removeprefix(public), headers=evil, allow_redirects=False, timeout=30)
    assert opened.status_code == 303 and opened.headers["Location"] == f"{public}/portal/", opened.headers

    # unset in development: http://localhost:PORT
    from tests.support.stack import TEST_SECRET
    from web.app import create_app
    from web.auth import TokenSettings

    monkeypatch.delenv("LAD_PUBLIC_URL", raising=False)
    monkeypatch.setenv("PORT", "4321")
    with create_app({"LAD_TOKENS": TokenSettings(TEST_SECRET, None, None, None)}).test_client() as client:
        answer = client.post(f"{B}/portal-sessions", json={}, headers={"Authorization": f"Bearer {manage}", **evil})
        assert answer.json["portalSession"]["url"].startswith("http://localhost:4321/portal/open?token=")
        moved = client.get("/console", headers=evil)
        assert moved.headers["Location"] == "http://localhost:4321/console/"
    # and required in production
    monkeypatch.setenv("LAD_ENV", "production")
    with pytest.raises(RuntimeError, match="LAD_PUBLIC_URL"):
        create_app({"LAD_TOKENS": TokenSettings("x" * 32, None, None, "lad-billing")})
