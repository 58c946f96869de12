"""Refunds return credit in the reverse of the order the debit drew on its grants — that order as it
stood when the debit was made, overdue grants first (billing_core.ledger.book.draw_order) — on real
PostgreSQL, without the web layer.

The case: a charge settling a hold draws first on a promotional grant past its expiry (kept alive only
because it backs the hold, though its priority would put it after the paid grant), then on a current
paid grant. Refunded in two parts, the first part goes back into the paid grant (drawn last), the
rest cannot revive the expired grant and becomes a new promotional grant that does not expire. The
paid grant never gets back more than the debit took from it.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import func, select, update

from billing_core.db import UnitOfWork
from billing_core.ledger import credits, verification
from billing_core.ledger.commands import RefundRequest, TopUpRequest
from billing_core.ledger.tables import credit_grants, grant_draws
from billing_core.ledger.wallets import debit_for_event
from billing_core.lifecycle import holds
from billing_core.lifecycle.commands import ReservationRequest
from billing_core.usage import charging, events
from billing_core.usage.commands import ChargeRequest
from tests.support.helpers import stt_items


def _top_up(engine, tenant: str, **fields: object) -> uuid.UUID:
    with UnitOfWork(engine) as uow:
        result = credits.top_up(uow, tenant, TopUpRequest.model_validate(
            {"idempotencyKey": str(uuid.uuid4()), **fields}), created_by="test")
    assert result.grant is not None
    return result.grant.id


def _charge(engine, tenant: str, reservation_id: uuid.UUID | None = None) -> uuid.UUID:
    """Accept a charge of 0.01 and settle it here; the id of its debit."""
    command = ChargeRequest.model_validate({
        "featureKey": "call", "idempotencyKey": str(uuid.uuid4()), "items": stt_items("100"),
        "reservationId": None if reservation_id is None else str(reservation_id)})
    with UnitOfWork(engine) as uow:
        event = events.accept_charge(uow, tenant, command, user_id="test").event
    with UnitOfWork(engine) as uow:
        charging.charge_pending_batch(uow, tenant, 500)  # (or the worker got there first: the same code)
    with UnitOfWork(engine) as uow:
        debit = debit_for_event(uow, tenant, event.id)
    assert debit is not None and debit.amount == Decimal("-0.01")
    return debit.id


def _refund(engine, tenant: str, debit_id: uuid.UUID, amount: str | None) -> None:
    with UnitOfWork(engine) as uow:
        credits.refund(uow, tenant, RefundRequest.model_validate({
            "transactionId": str(debit_id), "amount": amount, "reason": "dropped call",
            "idempotencyKey": str(uuid.uuid4())}), created_by="test")


def _grants(engine, tenant: str) -> dict[uuid.UUID, dict]:
    with engine.connect() as connection:
        return {r.id: dict(r._mapping) for r in connection.execute(
            select(credit_grants).where(credit_grants.c.tenant_id == tenant))}


def test_a_refund_returns_credit_in_the_order_the_debit_drew_overdue_grants_first(engine, tenant):
    soon = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    promotion = _top_up(engine, tenant, amount="0.006", kind="promotional", priority=60, expiresAt=soon)
    paid = _top_up(engine, tenant, amount="0.02", kind="paid", priority=50)

    # a first charge while the promotion is current: priority 50 before 60, so it draws on the paid grant
    _charge(engine, tenant)
    assert _grants(engine, tenant)[paid]["remaining"] == Decimal("0.01")

    with UnitOfWork(engine) as uow:
        hold = holds.reserve(uow, tenant, ReservationRequest(
            featureKey="call", amount="0.015", ttlSeconds=3600, idempotencyKey=str(uuid.uuid4())),
            created_by="test").hold
    # the promotion runs out while the hold is open (the database's clock moved, not the test's):
    # its 0.006 backs the hold, so it stays and is drawn first, before the paid grant
    with engine.begin() as connection:
        connection.execute(update(credit_grants).where(credit_grants.c.tenant_id == tenant,
                                                       credit_grants.c.id == promotion)
                           .values(expires_at=func.now() - timedelta(seconds=1)))
    debit = _charge(engine, tenant, hold.id)
    with engine.connect() as connection:
        drawn = dict(connection.execute(select(grant_draws.c.grant_id, grant_draws.c.amount).where(
            grant_draws.c.tenant_id == tenant, grant_draws.c.ledger_entry_id == debit)).all())
    assert drawn == {promotion: Decimal("-0.006"), paid: Decimal("-0.004")}

    # part of it back: into the grant drawn last, the paid one
    _refund(engine, tenant, debit, "0.004")
    grants = _grants(engine, tenant)
    assert grants[paid]["remaining"] == Decimal("0.01")
    assert set(grants) == {promotion, paid}  # no new grant yet

    # the rest: it was drawn from the expired promotion, which is not revived; a new promotional
    # grant that does not expire takes it, and the paid grant gets nothing more than it gave
    _refund(engine, tenant, debit, None)
    grants = _grants(engine, tenant)
    assert grants[paid]["remaining"] == Decimal("0.01")
    assert grants[promotion]["remaining"] == 0 and grants[promotion]["expired_at"] is not None
    (new,) = [g for g in grants.values() if g["id"] not in (promotion, paid)]
    assert (new["kind"], new["source"], new["amount"], new["remaining"], new["expires_at"]) == (
        "promotional", "refund", Decimal("0.006"), Decimal("0.006"), None)

    with UnitOfWork(engine) as uow:
        assert verification.verify(uow, tenant).ok
