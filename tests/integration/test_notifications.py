"""Notification delivery in-process against the real database and real local receivers (webhook, SMTP):
concurrent sweeps and deliveries deliver once, outdated messages are dropped, retries give up at the
horizon, a dead worker's attempt is recorded as abandoned; e-mail through a real SMTP server (aiosmtpd)."""
from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone

from sqlalchemy import text

from billing_core.db import UnitOfWork
from billing_core.notifications import outbox
from tests.support.notifications import configure, enqueue_one, fund, webhook_tenant
from tests.support.receivers import SmtpInbox, WebhookReceiver


def test_concurrent_sweeps_and_deliveries_never_deliver_one_notification_twice(engine, tenant):
    with WebhookReceiver() as receiver:
        webhook_tenant(engine, tenant, receiver.url)
        ids = [enqueue_one(engine, tenant) for _ in range(30)]
        with engine.begin() as connection:
            connection.execute(text("UPDATE notifications SET enqueued_at = now() - interval '10 minutes' "
                                    "WHERE id = ANY(:ids)"), {"ids": ids})
        settings = outbox.NotificationSettings(retry_base_ms=1000, allow_private_addresses=True)  # local receivers
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
        settings = outbox.NotificationSettings(retry_base_ms=60_000, retry_horizon_ms=3_600_000,
                                               allow_private_addresses=True)  # local receivers
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


def test_network_errors_are_retried_and_a_dead_workers_attempt_is_recorded_as_abandoned(engine, tenant):
    with WebhookReceiver() as receiver:
        closed = WebhookReceiver()
        closed_url = closed.url
        closed.stop()  # nothing listens there any more: connection refused
        webhook_tenant(engine, tenant, closed_url)
        notification_id = enqueue_one(engine, tenant)
        settings = outbox.NotificationSettings(retry_base_ms=1000, allow_private_addresses=True)  # local receivers
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
