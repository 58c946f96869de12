"""Alert settings, balances and notifications written through billing_core in-process, for the alert and
notification tests."""
from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text

from billing_core.db import UnitOfWork
from billing_core.ledger.commands import AdjustmentRequest, TopUpRequest
from billing_core.ledger.credits import adjust, top_up
from billing_core.notifications import alerts, outbox
from billing_core.notifications.alerts import AlertSettingsRequest


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


def enqueue_one(engine, tenant: str, event_type: str = "balance.low", payload: dict | None = None) -> uuid.UUID:
    with UnitOfWork(engine) as uow:
        ids = outbox.enqueue(uow, tenant, event_type, payload or {"threshold": "5", "availableBalance": "4"})
        uow.commit()
    assert len(ids) == 1
    return ids[0]
