"""Stripe events processed in-process against the real database: interleavings the stack hits only by
chance, made deterministic."""
from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import func, select, text

from billing_core import exactjson
from billing_core.db import UnitOfWork
from billing_core.ledger.tables import wallets
from billing_core.payments import stripe_events as stripe_event_store
from tests.support.stripe_events import DEADLINE_SECONDS, _id, charge_refunded, checkout_completed, event_row


def test_refund_racing_its_checkout_is_not_left_waiting(engine, tenant, monkeypatch):
    """The interleaving the concurrent case above hits only by chance, made deterministic on the real DB: the
    refund's worker finds no grant yet and marks itself waiting; before it commits, the checkout's
    worker runs (to the end, or until it blocks on a lock the refund holds). Whatever the order,
    once both are handled the payment is credited and clawed back: the refund is not left waiting."""
    payment = _id("pi")
    refund = charge_refunded(tenant, payment, 500, 500)
    checkout = checkout_completed(tenant, payment, 500)
    for event in (refund, checkout):  # stored directly: no task is queued, this test plays both workers
        with UnitOfWork(engine) as uow:
            assert stripe_event_store.record_event(uow, exactjson.loads(exactjson.dumps(event)))

    real_mark = stripe_event_store._mark
    outcome: dict[str, Any] = {}
    threads: list[threading.Thread] = []

    def run_checkout() -> None:
        try:
            with UnitOfWork(engine) as uow:
                outcome["pid"] = uow.connection.execute(select(func.pg_backend_pid())).scalar_one()
                outcome["checkout"] = stripe_event_store.process_event(uow, checkout["id"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    def checkout_blocked() -> bool:
        if "pid" not in outcome:
            return False
        with engine.connect() as connection:
            waiting = connection.execute(text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
                                         {"pid": outcome["pid"]}).scalar_one_or_none()
        return waiting == "Lock"

    def mark_then_let_the_checkout_run(uow, event_id, status, *rest):
        real_mark(uow, event_id, status, *rest)
        if event_id == refund["id"] and not threads:
            threads.append(threading.Thread(target=run_checkout))
            threads[0].start()
            deadline = time.monotonic() + DEADLINE_SECONDS
            while threads[0].is_alive() and not checkout_blocked():
                assert time.monotonic() < deadline, "the checkout neither finished nor waited on a lock"
                time.sleep(0.05)

    monkeypatch.setattr(stripe_event_store, "_mark", mark_then_let_the_checkout_run)
    with UnitOfWork(engine) as uow:
        stripe_event_store.process_event(uow, refund["id"])
    threads[0].join(DEADLINE_SECONDS)
    assert not threads[0].is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["checkout"] == "processed"
    row = event_row(engine, refund["id"])
    assert row.status == "processed", (row.status, row.detail)
    with engine.connect() as connection:
        balance = connection.execute(select(wallets.c.current_balance).where(wallets.c.tenant_id == tenant)).scalar_one()
    assert balance == 0
