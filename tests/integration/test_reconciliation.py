"""Hourly reconciliation against the real database."""
from __future__ import annotations

import threading

from sqlalchemy import text


def test_reconciliation_records_one_run_per_hour_however_often_it_runs(engine):
    from billing_core.db import UnitOfWork
    from billing_core.ledger import reconciliation

    with engine.begin() as connection:
        connection.execute(text("DELETE FROM reconciliation_runs"))
    results = []

    def run() -> None:
        with UnitOfWork(engine) as uow:
            results.append(reconciliation.reconcile(uow))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.recorded for r in results) == [False, False, True]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM reconciliation_runs")).scalar_one() == 1


def test_a_settled_hold_whose_event_is_missing_is_reported(engine, tenant):
    """No foreign key from reservations to usage_events since migration 0050 (it made a cycle Citus cannot
    distribute): the ledger verification reports a settled hold that names no event of its tenant."""
    import uuid

    from billing_core.db import UnitOfWork
    from billing_core.ledger import credits
    from billing_core.ledger.commands import TopUpRequest
    from billing_core.ledger.verification import verify
    from billing_core.lifecycle.commands import ReservationRequest
    from billing_core.lifecycle.holds import reserve

    with UnitOfWork(engine) as uow:
        credits.top_up(uow, tenant, TopUpRequest(amount="10", idempotencyKey="fund"), created_by="test")
    with UnitOfWork(engine) as uow:
        hold = reserve(uow, tenant, ReservationRequest(featureKey="voice-agent", amount="2",
                                                       idempotencyKey=str(uuid.uuid4())), created_by="test").hold
    with UnitOfWork(engine) as uow:
        assert verify(uow, tenant).ok
    missing = uuid.uuid4()
    with engine.begin() as connection:  # what the dropped key used to refuse
        connection.execute(text("UPDATE reservations SET usage_event_id = :e WHERE tenant_id = :t AND id = :id"),
                           {"e": missing, "t": tenant, "id": hold.id})
    with UnitOfWork(engine) as uow:
        found = verify(uow, tenant)
        everyone = verify(uow)
    expected = {"tenantId": tenant, "kind": "hold_event", "reservationId": str(hold.id), "usageEventId": str(missing)}
    assert not found.ok and expected in found.mismatches
    assert expected in everyone.mismatches
