"""Low-balance alerts and notifications on the real stack: alert settings over HTTP; alerts that fire
once per crossing of a threshold (at or below it) and re-arm above it, during a burst of concurrent
charges, through holds, and between two evaluations; the beat scan as the safety net, also run twice
at once; signed webhook deliveries retried with backoff against a real local receiver (503, 503,
then 200; 429/408; never on 400), every attempt recorded; the sweep for lost messages; e-mail through
a real SMTP server (aiosmtpd).

Tasks are imported inside the tests: the Celery app must be configured after the `live` fixture has
put the stack's queue name into the environment."""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from billing_core.db import UnitOfWork
from billing_core.notifications import outbox
from tests.support.helpers import stt_items, wallet
from tests.support.helpers import top_up as http_top_up
from tests.support.notifications import configure, enqueue_one, evaluate, fired, fund, spend, webhook_tenant
from tests.support.polling import eventually
from tests.support.receivers import WebhookReceiver


# The README's verification snippet, read from the README itself:
# test_signature_verifies_with_the_documented_snippet runs exactly that text against a delivered request.
def _readme_snippet() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    [snippet] = [block for block in blocks if "def verify_lad_signature" in block]
    return snippet


SIGNATURE_SNIPPET = _readme_snippet()


def documented_verifier() -> Callable[..., bool]:
    namespace: dict[str, Any] = {}
    exec(compile(SIGNATURE_SNIPPET, "README-snippet", "exec"), namespace)  # noqa: S102
    return namespace["verify_lad_signature"]


# --- fixtures -------------------------------------------------------------------------------------


def retry_base_seconds(live) -> Decimal:
    return Decimal(live.env.get("NOTIFICATION_RETRY_BASE_SECONDS") or "30")


# --- helpers --------------------------------------------------------------------------------------


def poll(fetch: Callable[[], Any], until: Callable[[Any], bool], timeout: int = 60, what: str = "condition"):
    return eventually(fetch, timeout, what=what, until=until)
















def live_engine(live):
    from billing_core.db import engine_for

    return engine_for(live.env["DATABASE_URL"])


def celery():
    from tasks.app import celery_app

    return celery_app




def dispatch(ids: list[uuid.UUID]) -> None:
    from tasks.notifications import dispatch as send

    send(ids)


def notification(api, token: str, notification_id: uuid.UUID) -> dict:
    response = api.get(f"/api/billing/notifications/{notification_id}", token)
    assert response.status_code == 200, response.text
    return response.json()["notification"]


def settle_charges(api, token: str, count: int, seconds: str, prefix: str) -> None:
    def one(i: int) -> None:
        response = api.post("/api/billing/charge?wait=30", token, json={
            "featureKey": "voice-agent", "idempotencyKey": f"{prefix}-{i}", "items": stt_items(seconds)})
        assert response.status_code == 200, response.text

    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(one, range(count)))


# --- settings over HTTP ---------------------------------------------------------------------------


def test_alert_settings_put_get_and_validation(api, tokens, tenant, make_token):
    path = "/api/billing/settings/alerts"
    assert api.get(path, tokens["admin"]).status_code == 404
    http_top_up(api, tokens["admin"], "100")  # well above every threshold: nothing fires meanwhile
    body = {"thresholds": ["50", "10.0", "0"], "webhookUrl": "https://127.0.0.1:9/lad?x=1",
            "email": "ops@example.com"}
    response = api.request("PUT", path, tokens["admin"], json=body)
    assert response.status_code == 200, response.text
    first = response.json()["alerts"]
    assert first["thresholds"] == ["50", "10", "0"]
    assert first["webhookSecret"].startswith("whsec_") and len(first["webhookSecret"]) > 40
    assert [(s["threshold"], s["eventType"], s["armed"]) for s in first["states"]] == [
        ("50", "balance.low", True), ("10", "balance.low", True), ("0", "balance.depleted", True)]
    assert api.get(path, tokens["admin"]).json()["alerts"] == first

    # PUT again without a secret: the secret stays (idempotent); with one: it is replaced
    again = api.request("PUT", path, tokens["admin"], json=body).json()["alerts"]
    assert again["webhookSecret"] == first["webhookSecret"] and again["thresholds"] == first["thresholds"]
    changed = api.request("PUT", path, tokens["admin"], json={
        "thresholds": [5, "1"], "webhookSecret": "my-own-secret-0123456789"}).json()["alerts"]
    assert changed["thresholds"] == ["5", "1"] and changed["webhookSecret"] == "my-own-secret-0123456789"
    assert changed["webhookUrl"] is None and changed["email"] is None

    for capability in ("billing.view", "billing.charge"):  # the secret is for admins only
        other = make_token(tenant, capability)
        assert api.get(path, other).status_code == 403
        assert api.request("PUT", path, other, json=body).status_code == 403

    bad = [
        ({"thresholds": []}, "thresholds"),
        ({"thresholds": [str(i) for i in range(11)]}, "thresholds"),
        ({"thresholds": ["10", "10.00"]}, "thresholds"),
        ({"thresholds": ["-1"]}, "thresholds[0]"),
        ({"thresholds": ["1e13"]}, "thresholds[0]"),
        ({"thresholds": ["0.0000000000001"]}, "thresholds[0]"),
        ({"thresholds": ["1"], "webhookUrl": "ftp://example.com/x"}, "webhookUrl"),
        ({"thresholds": ["1"], "webhookUrl": "https://user:pw@example.com/"}, "webhookUrl"),
        ({"thresholds": ["1"], "webhookUrl": "https:///nohost"}, "webhookUrl"),
        ({"thresholds": ["1"], "email": "not-an-address"}, "email"),
        ({"thresholds": ["1"], "email": "a@b.com\r\nBcc: x@y.com"}, "email"),
        ({"thresholds": ["1"], "webhookSecret": "short"}, "webhookSecret"),
        ({"thresholds": ["1"], "unknown": True}, "unknown"),
    ]
    for payload, field in bad:
        response = api.request("PUT", path, tokens["admin"], json=payload)
        assert response.status_code == 400, (payload, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error" and error["details"]["field"] == field, (payload, error)
    # a JSON number is read as the exact decimal it spells
    response = api.request("PUT", path, tokens["admin"], data=b'{"thresholds": [1.50, 0.1]}',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["alerts"]["thresholds"] == ["1.5", "0.1"]


# --- when alerts fire (billing_core against the real database) ------------------------------------












# --- the stack: charging path, beat scan, deliveries ----------------------------------------------


def test_a_burst_of_charges_fires_once_per_threshold_and_rearms_after_a_top_up(api, tokens, tenant, make_token,
                                                                               live, sink):
    admin = tokens["admin"]
    http_top_up(api, admin, "10")
    response = api.request("PUT", "/api/billing/settings/alerts", admin,
                           json={"thresholds": ["8", "5", "0"], "webhookUrl": sink.url})
    assert response.status_code == 200, response.text

    def low_and_depleted() -> list[tuple[str, str, str]]:
        page = api.get("/api/billing/notifications?limit=200", admin).json()["notifications"]
        return sorted((n["type"], n["payload"]["threshold"], n["status"]) for n in page)

    def kick() -> None:  # the beat scan, as beat sends it (the charging path may have fired already)
        celery().send_task("billing.scan_balance_alerts")

    settle_charges(api, tokens["charge"], 30, "2500", "burst-1")  # 30 × 0.25 at once: 10 → 2.5
    kick()
    poll(low_and_depleted, lambda v: v == [("balance.low", "5", "delivered"), ("balance.low", "8", "delivered")],
         what="one delivered alert per threshold crossed")

    http_top_up(api, admin, "10")  # 12.5: above 8 and 5 again
    kick()
    poll(lambda: api.get("/api/billing/settings/alerts", admin).json()["alerts"]["states"],
         lambda s: [x["armed"] for x in s] == [True, True, True] and s[0]["lastRearmedAt"],
         what="re-armed above 8 and 5")

    settle_charges(api, tokens["charge"], 20, "2500", "burst-2")  # 12.5 → 7.5: crosses 8 only
    kick()
    poll(low_and_depleted, lambda v: v.count(("balance.low", "8", "delivered")) == 2, what="8 fired again")
    settle_charges(api, tokens["charge"], 30, "2500", "burst-3")  # 7.5 → 0: crosses 5 and 0
    kick()
    expected = [("balance.depleted", "0", "delivered")] + [("balance.low", "5", "delivered")] * 2 + \
        [("balance.low", "8", "delivered")] * 2
    poll(low_and_depleted, lambda v: v == expected, what="5 again and depleted")
    assert wallet(api, admin)["availableBalance"] == "0"

    # nothing more to fire, however often it is evaluated
    assert evaluate(live_engine(live), tenant) == []
    received = [r for r in sink.received() if r.headers.get("LAD-Event-Id") in
                {n["id"] for n in api.get("/api/billing/notifications?limit=200", admin).json()["notifications"]}]
    assert len(received) == 5
    assert low_and_depleted() == expected
    assert 'lad_alerts_fired_total{event_type="balance.depleted"}' in api.get("/metrics").text


def test_the_beat_scan_finds_a_crossing_the_charging_path_did_not_report(api, tokens, tenant, engine, sink):
    fund(engine, tenant, "10")
    configure(engine, tenant, ["5"], webhookUrl=sink.url)
    spend(engine, tenant, "7")  # an adjustment: no charge, so nobody asked for an evaluation
    # the job exactly as beat sends it, twice at the same moment
    celery().send_task("billing.scan_balance_alerts")
    celery().send_task("billing.scan_balance_alerts")
    found = poll(lambda: api.get("/api/billing/notifications", tokens["admin"]).json()["notifications"],
                 lambda v: len(v) >= 1 and v[0]["status"] == "delivered", what="the scan's alert delivered")
    celery().send_task("billing.scan_balance_alerts")
    assert fired(engine, tenant) == [("balance.low", "5", "3")]
    assert found[0]["payload"]["transactionType"] == "adjustment"
    assert [r.headers["LAD-Event-Id"] for r in sink.received()].count(found[0]["id"]) == 1


def test_delivery_retries_503_twice_then_succeeds_and_records_every_attempt(api, tokens, tenant, engine, live):
    with WebhookReceiver([503, 503]) as receiver:
        webhook_tenant(engine, tenant, receiver.url)
        notification_id = enqueue_one(engine, tenant)
        dispatch([notification_id])
        timeout = 60 + int(retry_base_seconds(live) * 4)
        got = poll(lambda: notification(api, tokens["admin"], notification_id), lambda n: n["status"] != "pending",
                   timeout=timeout, what="delivered")
        requests_seen = receiver.received()
    assert got["status"] == "delivered" and got["attemptCount"] == 3
    assert [(a["attempt"], a["outcome"], a["httpStatus"]) for a in got["attempts"]] == [
        (1, "retry", 503), (2, "retry", 503), (3, "delivered", 200)]
    assert all(a["durationMs"] is not None and a["startedAt"] for a in got["attempts"])
    assert got["attempts"][0]["error"].startswith("HTTP 503")
    assert got["deliveredAt"] is not None and got["lastError"] is None
    assert [r.status for r in requests_seen] == [503, 503, 200]
    assert len({r.body for r in requests_seen}) == 1  # the same event every time
    assert [r.headers["LAD-Delivery-Attempt"] for r in requests_seen] == ["1", "2", "3"]
    exported = api.get("/metrics").text
    assert 'lad_webhook_delivery_failures_total{event_type="balance.low"}' in exported
    assert 'lad_notification_deliveries_total{channel="webhook",event_type="balance.low",result="retry"}' in exported


@pytest.mark.parametrize("status", [400, 404, 410, 301])
def test_other_4xx_and_redirects_are_not_retried(api, tokens, tenant, engine, status):
    with WebhookReceiver([status]) as receiver:
        webhook_tenant(engine, tenant, receiver.url)
        notification_id = enqueue_one(engine, tenant)
        dispatch([notification_id])
        got = poll(lambda: notification(api, tokens["admin"], notification_id), lambda n: n["status"] != "pending",
                   what="a final status")
        assert len(receiver.received()) == 1
    assert got["status"] == "failed" and got["attemptCount"] == 1 and got["failedAt"] is not None
    assert [(a["outcome"], a["httpStatus"]) for a in got["attempts"]] == [("failed", status)]
    assert got["lastError"].startswith(f"HTTP {status}")


def test_408_and_429_are_retried(api, tokens, tenant, engine, live):
    with WebhookReceiver([429, 408]) as receiver:
        webhook_tenant(engine, tenant, receiver.url)
        notification_id = enqueue_one(engine, tenant)
        dispatch([notification_id])
        got = poll(lambda: notification(api, tokens["admin"], notification_id), lambda n: n["status"] != "pending",
                   timeout=60 + int(retry_base_seconds(live) * 4), what="delivered")
    assert [(a["outcome"], a["httpStatus"]) for a in got["attempts"]] == [
        ("retry", 429), ("retry", 408), ("delivered", 200)]


def test_signature_verifies_with_the_documented_snippet(api, tokens, tenant, engine):
    verify = documented_verifier()
    secret = "whsec_test_" + uuid.uuid4().hex
    with WebhookReceiver() as receiver:
        webhook_tenant(engine, tenant, receiver.url, webhookSecret=secret)
        notification_id = enqueue_one(engine, tenant, payload={"threshold": "5", "availableBalance": "4.25"})
        dispatch([notification_id])
        request = receiver.wait_for(1)[0]
    header = request.headers["LAD-Signature"]
    assert verify(secret, request.body, header)
    assert not verify(secret, request.body.replace(b"4.25", b"9.25"), header)  # tampered body
    assert not verify("whsec_someone_else", request.body, header)  # another secret
    stale = header.replace(header.split(",")[0], "t=1000000000")
    assert not verify(secret, request.body, stale)  # an old (replayed) signature
    event = json.loads(request.body)
    assert event == {"id": str(notification_id), "type": "balance.low", "createdAt": event["createdAt"],
                     "tenantId": tenant, "data": {"threshold": "5", "availableBalance": "4.25"}}
    assert request.headers["LAD-Event-Id"] == str(notification_id)
    assert request.headers["LAD-Event-Type"] == "balance.low"
    assert request.headers["Content-Type"] == "application/json"


def test_a_lost_message_is_delivered_by_the_sweep(api, tokens, tenant, engine, sink):
    webhook_tenant(engine, tenant, sink.url)
    notification_id = enqueue_one(engine, tenant)  # committed, but no message is ever sent for it
    with engine.begin() as connection:  # as if that happened a while ago
        connection.execute(text("UPDATE notifications SET enqueued_at = now() - interval '10 minutes', "
                                "next_attempt_at = now() - interval '10 minutes' WHERE id = :id"),
                           {"id": notification_id})
    celery().send_task("billing.sweep_notifications")  # as beat sends it
    got = poll(lambda: notification(api, tokens["admin"], notification_id), lambda n: n["status"] == "delivered",
               what="delivered by the sweep")
    assert got["attemptCount"] == 1
    assert [r.headers["LAD-Event-Id"] for r in sink.received()].count(str(notification_id)) == 1








def test_notifications_list_pages_filters_and_tenant_isolation(api, tokens, tenant, engine, make_token):
    with WebhookReceiver(then=400) as receiver:
        webhook_tenant(engine, tenant, receiver.url)
        ids = [enqueue_one(engine, tenant, "balance.low") for _ in range(3)]
        ids += [enqueue_one(engine, tenant, "invoice.finalized", {"invoiceId": "inv-1", "period": "2026-10"})]
        settings = outbox.NotificationSettings(allow_private_addresses=True)  # a local receiver
        for notification_id in ids[:2]:  # two failed at once on 400
            outbox.deliver(lambda: UnitOfWork(engine), notification_id, None, settings)
    admin = tokens["admin"]
    listed, cursor = [], ""
    while True:
        page = api.get(f"/api/billing/notifications?limit=3{cursor}", admin).json()
        listed += page["notifications"]
        if not page["nextCursor"]:
            break
        cursor = f"&cursor={page['nextCursor']}"
    assert [n["id"] for n in listed] == [str(i) for i in reversed(ids)]
    failed = api.get("/api/billing/notifications?status=failed", admin).json()["notifications"]
    assert {n["id"] for n in failed} == {str(i) for i in ids[:2]}
    assert all(len(n["attempts"]) == 1 and n["attempts"][0]["httpStatus"] == 400 for n in failed)
    invoices = api.get("/api/billing/notifications?type=invoice.finalized", admin).json()["notifications"]
    assert [n["id"] for n in invoices] == [str(ids[3])] and invoices[0]["payload"]["period"] == "2026-10"
    assert api.get("/api/billing/notifications?channel=email", admin).json()["notifications"] == []
    assert api.get("/api/billing/notifications?status=bogus", admin).status_code == 400
    assert api.get("/api/billing/notifications", tokens["view"]).status_code == 403
    stranger = make_token(f"t-{uuid.uuid4().hex[:12]}", "billing.admin")
    assert api.get(f"/api/billing/notifications/{ids[0]}", stranger).status_code == 404
    assert api.get("/api/billing/notifications", stranger).json()["notifications"] == []


def test_operator_events_go_to_the_operator_settings(api, tokens, engine):
    secret = "whsec_operator_" + uuid.uuid4().hex
    with WebhookReceiver() as receiver:
        operator = outbox.OperatorSettings(webhook_url=receiver.url, webhook_secret=secret)
        with UnitOfWork(engine) as uow:
            ids = outbox.enqueue(uow, None, "reconciliation.mismatch", {"walletsChecked": 3, "mismatches": [
                {"tenantId": "t-x", "reason": "balance"}]}, operator=operator)
            uow.commit()
        assert len(ids) == 1
        outcome = outbox.deliver(lambda: UnitOfWork(engine), ids[0], 0,
                                        outbox.NotificationSettings(operator=operator, allow_private_addresses=True))
        assert outcome.status == "delivered"
        request = receiver.received()[0]
    assert documented_verifier()(secret, request.body, request.headers["LAD-Signature"])
    listed = api.get("/api/billing/notifications?operator=true&type=reconciliation.mismatch&limit=200",
                     tokens["admin"]).json()["notifications"]
    mine = [n for n in listed if n["id"] == str(ids[0])]
    assert mine and mine[0]["tenantId"] is None and mine[0]["status"] == "delivered"
    with UnitOfWork(engine) as uow:  # nothing configured: nothing enqueued
        assert outbox.enqueue(uow, None, "reconciliation.mismatch", {},
                                     operator=outbox.OperatorSettings()) == []


# --- e-mail ---------------------------------------------------------------------------------------






def test_email_alert_on_the_stack(api, tokens, tenant, engine, smtp_inbox):
    fund(engine, tenant, "10")
    address = f"{tenant}@tenant.test"
    response = api.request("PUT", "/api/billing/settings/alerts", tokens["admin"],
                           json={"thresholds": ["5"], "email": address})
    assert response.status_code == 200, response.text
    spend(engine, tenant, "6")
    celery().send_task("billing.scan_balance_alerts")
    message = smtp_inbox.wait_for(lambda m: address in m.envelope_to)
    assert message["Subject"] == "[LAD Billing] Low balance: 4 USD available (alert at 5)"
    got = poll(lambda: api.get("/api/billing/notifications", tokens["admin"]).json()["notifications"],
               lambda v: v and v[0]["status"] == "delivered", what="recorded as delivered")
    assert got[0]["channel"] == "email" and got[0]["attempts"][0]["smtpResult"].startswith("250")




