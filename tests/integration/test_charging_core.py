"""billing_core's charging against real PostgreSQL, without the web layer: running a charge twice,
the ledger's last line of defence, and the pending sweep under concurrency."""
from __future__ import annotations

import threading
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from billing_core.db import UnitOfWork
from billing_core.ledger.commands import TopUpRequest
from billing_core.ledger.credits import top_up
from billing_core.ledger.tables import ledger_entries
from billing_core.usage import charging, events
from billing_core.usage.commands import ChargeRequest
from billing_core.usage.tables import usage_events
from tests.support.helpers import stt_items


def accept(engine, tenant: str, key: str) -> events.ChargeOutcome:
    command = ChargeRequest.model_validate({"featureKey": "f", "idempotencyKey": key, "items": stt_items("100")})
    with UnitOfWork(engine) as uow:
        return events.accept_charge(uow, tenant, command, user_id="test")


def fund(engine, tenant: str, amount: str) -> None:
    with UnitOfWork(engine) as uow:
        top_up(uow, tenant, TopUpRequest(amount=amount, idempotencyKey=str(uuid.uuid4())), created_by="test")


def test_running_a_charge_twice_changes_nothing_the_second_time(engine, tenant):
    fund(engine, tenant, "1")
    event = accept(engine, tenant, "k").event
    with UnitOfWork(engine) as uow:
        first = charging.charge_usage_event(uow, tenant, event.id)
    with UnitOfWork(engine) as uow:
        second = charging.charge_usage_event(uow, tenant, event.id)
    assert first.event.status == second.event.status == "charged"
    assert first.debit == second.debit
    assert second.debit.balance_after == Decimal("0.99")


def test_ledger_refuses_a_second_debit_for_one_usage_event(engine, tenant):
    fund(engine, tenant, "1")
    event = accept(engine, tenant, "k").event
    with UnitOfWork(engine) as uow:
        debit = charging.charge_usage_event(uow, tenant, event.id).debit
    with pytest.raises(IntegrityError, match="ledger_one_debit_per_event"):
        with engine.begin() as connection:
            connection.execute(insert(ledger_entries).values(
                id=uuid.uuid4(), tenant_id=tenant, wallet_id=debit.wallet_id, entry_type="debit",
                amount=debit.amount, balance_before=debit.balance_after,
                balance_after=debit.balance_after + debit.amount, usage_event_id=event.id, created_at=func.now()))


def test_concurrent_sweeps_never_claim_the_same_event(engine, tenant):
    events = [accept(engine, tenant, f"k-{i}").event.id for i in range(200)]
    with engine.begin() as connection:  # as if every message was lost a while ago
        connection.execute(update(usage_events).where(usage_events.c.tenant_id == tenant)
                           .values(enqueued_at=func.now() - func.make_interval(0, 0, 0, 0, 1)))
    claimed: list[list] = []
    barrier = threading.Barrier(4)

    def sweep():
        barrier.wait()
        with UnitOfWork(engine) as uow:
            claimed.append([s.usage_event_id for s in charging.claim_stale_pending(uow, 30, limit=80)
                            if s.tenant_id == tenant])

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [event_id for batch in claimed for event_id in batch]
    assert len(everything) == len(set(everything))
    assert set(everything) <= set(events)
    with UnitOfWork(engine) as uow:  # just re-enqueued: not stale again until its (doubled) age passes
        assert [s for s in charging.claim_stale_pending(uow, 30) if s.usage_event_id in set(everything)] == []
    with engine.connect() as connection:
        counts = dict(connection.execute(select(usage_events.c.id, usage_events.c.enqueue_count)
                                         .where(usage_events.c.tenant_id == tenant)).all())
    assert all(counts[e] == 2 for e in everything)
