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
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from billing_core.db import UnitOfWork
from billing_core.ledger.commands import AdjustmentRequest, TopUpRequest
from billing_core.ledger.credits import adjust, top_up
from billing_core.lifecycle.commands import ReleaseReservationRequest, ReservationRequest
from billing_core.lifecycle.holds import release, reserve
from billing_core.notifications import alerts, outbox
from billing_core.notifications.alerts import AlertSettingsRequest
from tests.helpers import stt_items, wallet
from tests.helpers import top_up as http_top_up
from tests.receivers import SmtpInbox, WebhookReceiver


# The README's verification snippet, read from the README itself:
# test_signature_verifies_with_the_documented_snippet runs exactly that text against a delivered request.
def _readme_snippet() -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    [snippet] = [block for block in blocks if "def verify_lad_signature" in block]
    return snippet


SIGNATURE_SNIPPET = _readme_snippet()


def documented_verifier() -> Callable[..., bool]:
    namespace: dict[str, Any] = {}
    exec(compile(SIGNATURE_SNIPPET, "README-snippet", "exec"), namespace)  # noqa: S102
    return namespace["verify_lad_signature"]


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sink(live) -> WebhookReceiver:
    """A receiver answering 200 to everything, for tests about when alerts fire."""
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


def retry_base_seconds(live) -> Decimal:
    return Decimal(live.env.get("NOTIFICATION_RETRY_BASE_SECONDS") or "30")


# --- helpers --------------------------------------------------------------------------------------


def poll(fetch: Callable[[], Any], until: Callable[[Any], bool], timeout: int = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout}s; last: {value!r}")
        time.sleep(0.2)


def fund(engine, tenant: str, amount: str) -> None:
    with UnitOfWork(engine) as uow:
        top_up(uow, tenant, TopUpRequest(amount=amount, idempotencyKey=str(uuid.uuid4())), created_by="test")


def spend(engine, tenant: str, amount: str) -> None:
    """A negative adjustment: lowers the balance outside the charging path."""
    with UnitOfWork(engine) as uow:
        adjust(uow, tenant, AdjustmentRequest(amount=f"-{amount}", reason="test", idempotencyKey=str(uuid.uuid4())),
               created_by="test")


def configure(engine, tenant: str, thresholds: list[str], **body: Any) -> alerts.AlertSettings:
    with UnitOfWork(engine) as uow:
        return alerts.put_settings(uow, tenant, AlertSettingsRequest(thresholds=thresholds, **body))


def webhook_tenant(engine, tenant: str, url: str, **body: Any) -> None:
    """Alert settings for a tenant whose balance stays well above its threshold, so no alert of its
    own gets in the way of a delivery test (a tenant without funds is at or below any threshold)."""
    fund(engine, tenant, "100")
    configure(engine, tenant, ["1"], webhookUrl=url, **body)


def evaluate(engine, tenant: str) -> list[uuid.UUID]:
    with UnitOfWork(engine) as uow:
        return alerts.evaluate(uow, tenant)


def fired(engine, tenant: str) -> list[tuple[str, str, str]]:
    """(event type, threshold, available balance) of the tenant's alert notifications, oldest first."""
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT event_type, payload FROM notifications WHERE tenant_id = :t AND channel = 'webhook' "
            "ORDER BY created_at, payload->>'crossedAt', (payload->>'threshold')::numeric DESC"), {"t": tenant}).all()
    return [(r.event_type, r.payload["threshold"], r.payload["availableBalance"]) for r in rows]


def states(engine, tenant: str) -> dict[str, bool]:
    with UnitOfWork(engine) as uow:
        found = alerts.get_settings(uow, tenant)
    assert found is not None
    return {str(s.threshold): s.armed for s in found.states}


def live_engine(live):
    from billing_core.db import engine_for

    return engine_for(live.env["DATABASE_URL"])


def celery():
    from tasks.app import celery_app

    return celery_app


def enqueue_one(engine, tenant: str, event_type: str = "balance.low", payload: dict | None = None) -> uuid.UUID:
    with UnitOfWork(engine) as uow:
        ids = outbox.enqueue(uow, tenant, event_type, payload or {"threshold": "5", "availableBalance": "4"})
        uow.commit()
    assert len(ids) == 1
    return ids[0]


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


def test_fires_at_or_below_the_threshold_and_depleted_at_zero(engine, tenant, sink):
    fund(engine, tenant, "10")
    configure(engine, tenant, ["5", "0"], webhookUrl=sink.url)
    spend(engine, tenant, "4.9999")  # 5.0001: above 5, nothing fires
    evaluate(engine, tenant)
    assert fired(engine, tenant) == []
    spend(engine, tenant, "0.0001")  # exactly 5: at the threshold fires
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "5")]
    spend(engine, tenant, "4.9999")  # 0.0001 left: not depleted yet
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "5")]
    spend(engine, tenant, "0.0001")  # exactly 0: depleted
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "5"), ("balance.depleted", "0", "0")]
    assert states(engine, tenant) == {"5": False, "0": False}
    assert evaluate(engine, tenant) == []  # nothing new: nothing fires again


def test_rearms_above_the_threshold_even_between_two_evaluations_and_counts_holds(engine, tenant, sink):
    fund(engine, tenant, "10")
    configure(engine, tenant, ["5"], webhookUrl=sink.url)
    spend(engine, tenant, "6")  # 4
    evaluate(engine, tenant)
    assert len(fired(engine, tenant)) == 1
    # back above 5 and down again with no evaluation in between: the ledger shows both
    fund(engine, tenant, "10")  # 14
    spend(engine, tenant, "10")  # 4
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "4"), ("balance.low", "5", "4")]
    # a hold lowers the available balance: it crosses like a charge, and its release re-arms
    fund(engine, tenant, "10")  # 14
    evaluate(engine, tenant)
    assert states(engine, tenant) == {"5": True}
    with UnitOfWork(engine) as uow:
        hold = reserve(uow, tenant, ReservationRequest(featureKey="voice-agent", amount="9.5",
                                                       idempotencyKey=str(uuid.uuid4())), created_by="test")
    evaluate(engine, tenant)
    assert fired(engine, tenant)[-1] == ("balance.low", "5", "4.5")
    with UnitOfWork(engine) as uow:
        release(uow, tenant, hold.hold.id, ReleaseReservationRequest(), created_by="test")
    evaluate(engine, tenant)
    assert states(engine, tenant) == {"5": True}
    assert len(fired(engine, tenant)) == 3


def test_new_thresholds_start_armed_and_removed_ones_are_forgotten(engine, tenant, sink):
    fund(engine, tenant, "3")
    configure(engine, tenant, ["5"], webhookUrl=sink.url)  # already below: fires once
    evaluate(engine, tenant)
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "3")]
    configure(engine, tenant, ["5", "4"], webhookUrl=sink.url)  # 5 keeps its state, 4 is new
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "3"), ("balance.low", "4", "3")]
    configure(engine, tenant, ["4"], webhookUrl=sink.url)
    assert states(engine, tenant) == {"4": False}


def test_no_channel_no_settings_nothing_enqueued(engine, tenant):
    assert evaluate(engine, tenant) == []  # no settings at all
    configure(engine, tenant, ["5"])  # thresholds without a webhook or e-mail: states move, nothing is sent
    evaluate(engine, tenant)
    assert states(engine, tenant) == {"5": False}
    assert fired(engine, tenant) == []


def test_evaluations_and_scans_running_at_once_fire_each_crossing_once(engine, sink):
    tenants = [f"t-alert-race-{uuid.uuid4().hex[:10]}" for _ in range(12)]
    for tenant in tenants:
        fund(engine, tenant, "10")
        configure(engine, tenant, ["8", "5", "0"], webhookUrl=sink.url)
        spend(engine, tenant, "6")  # 4: crosses 8 and 5
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def run(job: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            job()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    jobs = [lambda: alerts.scan(lambda: UnitOfWork(engine), page_size=5) for _ in range(4)]
    jobs += [lambda: [evaluate(engine, t) for t in tenants] for _ in range(4)]
    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for tenant in tenants:
        assert sorted(fired(engine, tenant)) == [("balance.low", "5", "4"), ("balance.low", "8", "4")]


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


def test_concurrent_sweeps_and_deliveries_never_deliver_one_notification_twice(engine, tenant):
    with WebhookReceiver() as receiver:
        webhook_tenant(engine, tenant, receiver.url)
        ids = [enqueue_one(engine, tenant) for _ in range(30)]
        with engine.begin() as connection:
            connection.execute(text("UPDATE notifications SET enqueued_at = now() - interval '10 minutes' "
                                    "WHERE id = ANY(:ids)"), {"ids": ids})
        settings = outbox.NotificationSettings(retry_base_ms=1000)
        barrier = threading.Barrier(4)
        swept: list[list[uuid.UUID]] = []

        def sweep() -> None:
            barrier.wait()
            with UnitOfWork(engine) as uow:
                swept.append([i for i, _ in outbox.claim_lost(uow, settings, limit=20) if i in set(ids)])

        threads = [threading.Thread(target=sweep) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        everything = [i for batch in swept for i in batch]
        assert len(everything) == len(set(everything))  # disjoint claims

        # eight workers handed the same (fresh) notification at once: one delivers, the others stand aside
        target = enqueue_one(engine, tenant)
        results: list[str] = []
        barrier = threading.Barrier(8)

        def deliver() -> None:
            barrier.wait()
            results.append(outbox.deliver(lambda: UnitOfWork(engine), target, None, settings).status)

        threads = [threading.Thread(target=deliver) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results.count("delivered") == 1, results
        assert set(results) <= {"delivered", "leased", "done"}
        assert [r.headers["LAD-Event-Id"] for r in receiver.received()].count(str(target)) == 1


def test_an_outdated_message_is_dropped_and_retries_give_up_at_the_horizon(engine, tenant):
    with WebhookReceiver(then=503) as receiver:
        webhook_tenant(engine, tenant, receiver.url)
        notification_id = enqueue_one(engine, tenant)
        settings = outbox.NotificationSettings(retry_base_ms=60_000, retry_horizon_ms=3_600_000)
        new_uow = lambda: UnitOfWork(engine)  # noqa: E731
        first = outbox.deliver(new_uow, notification_id, 0, settings)
        assert first.status == "pending" and first.retry_in_ms is not None and 30_000 <= first.retry_in_ms <= 60_000
        assert first.expected_attempts == 1
        # a duplicate of the first message (expects 0 attempts) is dropped; the retry's is early
        assert outbox.deliver(new_uow, notification_id, 0, settings).status == "stale"
        early = outbox.deliver(new_uow, notification_id, 1, settings)
        assert early.status == "not_due" and early.retry_in_ms is not None
        assert outbox.deliver(new_uow, notification_id, None, settings).retry_in_ms is None
        # the horizon has passed by the next attempt: failed, not retried
        with engine.begin() as connection:
            connection.execute(text("UPDATE notifications SET next_attempt_at = now(), "
                                    "created_at = now() - interval '59 minutes 50 seconds' WHERE id = :id"),
                               {"id": notification_id})
        last = outbox.deliver(new_uow, notification_id, 1, settings)
        assert last.status == "failed" and last.attempt == 2
        assert len(receiver.received()) == 2
    with engine.connect() as connection:
        row = connection.execute(text("SELECT status, last_error FROM notifications WHERE id = :id"),
                                 {"id": notification_id}).one()
    assert row.status == "failed" and "gave up after 2 attempts" in row.last_error


def test_backoff_doubles_with_jitter_up_to_the_cap():
    settings = outbox.NotificationSettings(retry_base_ms=1000, retry_max_delay_ms=60_000)
    for attempt, ceiling in [(1, 1000), (2, 2000), (3, 4000), (7, 60_000), (60, 60_000)]:
        delays = {outbox.backoff_ms(attempt, settings) for _ in range(200)}
        assert all(ceiling // 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


def test_notifications_list_pages_filters_and_tenant_isolation(api, tokens, tenant, engine, make_token):
    with WebhookReceiver(then=400) as receiver:
        webhook_tenant(engine, tenant, receiver.url)
        ids = [enqueue_one(engine, tenant, "balance.low") for _ in range(3)]
        ids += [enqueue_one(engine, tenant, "invoice.finalized", {"invoiceId": "inv-1", "period": "2026-10"})]
        settings = outbox.NotificationSettings()
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
                                        outbox.NotificationSettings(operator=operator))
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


def test_email_sender_against_a_real_smtp_server():
    with SmtpInbox() as inbox:
        settings = outbox.NotificationSettings(smtp_url=inbox.url, smtp_from="LAD Billing <billing@lad.test>")
        subject, body = outbox.render_email(
            "balance.low", "t-mail", {"threshold": "10", "availableBalance": "7.5", "currency": "USD"},
            uuid.uuid4(), datetime.now(timezone.utc))
        result = outbox.send_email(settings, "ops@tenant.test", subject, body, {"LAD-Event-Type": "balance.low"})
        assert result.ok and result.smtp_result.startswith("250")
        message = inbox.wait_for(lambda m: True)
        assert message["Subject"] == "[LAD Billing] Low balance: 7.5 USD available (alert at 10)"
        assert message["From"] == "LAD Billing <billing@lad.test>" and message.envelope_to == ["ops@tenant.test"]
        assert message["LAD-Event-Type"] == "balance.low"
        content = message.get_content()
        assert "availableBalance: 7.5" in content and "Tenant: t-mail" in content

        inbox.replies.append("550 5.1.1 mailbox unavailable")
        refused = outbox.send_email(settings, "gone@tenant.test", subject, body)
        assert not refused.ok and not refused.retryable and refused.smtp_result.startswith("550")
        inbox.replies.append("451 4.3.0 try again later")
        later = outbox.send_email(settings, "ops@tenant.test", subject, body)
        assert not later.ok and later.retryable
    down = outbox.send_email(settings, "ops@tenant.test", subject, body)  # the server is gone
    assert not down.ok and down.retryable and down.error


def test_email_notification_delivered_in_process(engine, tenant):
    with SmtpInbox() as inbox:
        fund(engine, tenant, "100")
        configure(engine, tenant, ["1"], email="billing-admin@tenant.test")
        ids = [enqueue_one(engine, tenant, "balance.depleted", {"threshold": "0", "availableBalance": "0",
                                                                 "currency": "USD"}),
               enqueue_one(engine, tenant, "invoice.finalized", {"invoiceId": "inv-9", "period": "2026-10"})]
        settings = outbox.NotificationSettings(smtp_url=inbox.url)
        outcomes = [outbox.deliver(lambda: UnitOfWork(engine), i, 0, settings) for i in ids]
        assert [o.status for o in outcomes] == ["delivered", "delivered"]
        messages = {m["Subject"]: m for m in inbox.messages() if tenant in m.get_content()}
    assert set(messages) == {"[LAD Billing] Balance depleted: 0 USD available",
                             "[LAD Billing] Invoice 2026-10 is ready"}
    assert all(m.envelope_to == ["billing-admin@tenant.test"] for m in messages.values())
    with engine.connect() as connection:
        results = connection.execute(text("SELECT smtp_result FROM notification_attempts WHERE notification_id = "
                                          "ANY(:ids)"), {"ids": ids}).scalars().all()
    assert len(results) == 2 and all(r.startswith("250") for r in results)


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


def test_network_errors_are_retried_and_a_dead_workers_attempt_is_recorded_as_abandoned(engine, tenant):
    with WebhookReceiver() as receiver:
        closed = WebhookReceiver()
        closed_url = closed.url
        closed.stop()  # nothing listens there any more: connection refused
        webhook_tenant(engine, tenant, closed_url)
        notification_id = enqueue_one(engine, tenant)
        settings = outbox.NotificationSettings(retry_base_ms=1000)
        new_uow = lambda: UnitOfWork(engine)  # noqa: E731
        refused = outbox.deliver(new_uow, notification_id, 0, settings)
        assert refused.status == "pending" and refused.retry_in_ms is not None
        # a worker claims the next attempt and dies before recording anything
        configure(engine, tenant, ["1"], webhookUrl=receiver.url)
        with engine.begin() as connection:
            connection.execute(text("UPDATE notifications SET next_attempt_at = now(), destination = :url "
                                    "WHERE id = :id"), {"id": notification_id, "url": receiver.url})
        with UnitOfWork(engine) as uow:
            claimed = outbox.claim(uow, notification_id, 1, settings)
        assert isinstance(claimed, outbox.Claimed) and claimed.attempt == 2
        assert outbox.deliver(new_uow, notification_id, 2, settings).status == "leased"
        with engine.begin() as connection:  # its lease runs out
            connection.execute(text("UPDATE notifications SET lease_until = now() - interval '1 second' "
                                    "WHERE id = :id"), {"id": notification_id})
        assert outbox.deliver(new_uow, notification_id, 2, settings).status == "delivered"
        assert len(receiver.received()) == 1
    with engine.connect() as connection:
        attempts = connection.execute(text(
            "SELECT attempt, outcome, http_status, error FROM notification_attempts WHERE notification_id = :id "
            "ORDER BY attempt"), {"id": notification_id}).all()
    assert [(a.attempt, a.outcome, a.http_status) for a in attempts] == [
        (1, "retry", None), (2, "abandoned", None), (3, "delivered", 200)]
    assert "Connection" in attempts[0].error and "lease expired" in attempts[1].error


def test_webhooks_to_private_addresses_are_refused_unless_allowed(monkeypatch):
    from billing_core.notifications import outbox

    monkeypatch.delenv("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", raising=False)  # on in every environment
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data", "http://10.0.0.1/x"):
        result = outbox.post_webhook(url, b"{}", {}, 1)
        assert not result.ok and not result.retryable and "non-public" in result.error, url
    monkeypatch.setenv("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", "true")
    assert "non-public" not in (outbox.post_webhook("http://127.0.0.1:9/hook", b"{}", {}, 1).error or "")
