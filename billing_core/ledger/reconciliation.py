"""Hourly reconciliation: every wallet's ledger chain, balance, grants and holds (ledger.verify over
all wallets) and the backlog of pending charges. A mismatch is reported — a run row, a metric, an
operator notification — and never "fixed": the ledger is the truth and a person decides."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert

from billing_core.db import UnitOfWork
from billing_core.ledger import verification
from billing_core.ledger.tables import reconciliation_runs

STUCK_AFTER_SECONDS = 600  # a charge pending this long has outlived every retry the sweep makes early on


@dataclass(frozen=True)
class Reconciliation:
    ok: bool
    wallets_checked: int
    mismatches: list[dict[str, Any]]
    pending_events: int
    stuck_pending_events: int
    oldest_pending_seconds: Decimal
    recorded: bool  # False: this hour's run was recorded already (by a concurrent or earlier run)
    notification_ids: list[uuid.UUID]  # to dispatch once committed


def reconcile(uow: UnitOfWork, scans: UnitOfWork | None = None) -> Reconciliation:
    """Check everything, record the run for this hour once, and on a mismatch enqueue an operator
    notification in the same transaction; commits. The scans (every wallet's chain, the pending
    backlog) read `scans` when given — the replica's, one snapshot — and the record is written by `uow`."""
    scans = scans or uow
    books = verification.verify(scans)
    pending, stuck, oldest = scans.connection.execute(text("""
        SELECT count(*),
               count(*) FILTER (WHERE created_at < now() - make_interval(secs => :stuck)),
               coalesce(extract(epoch FROM now() - min(created_at)), 0)
        FROM usage_events /* citus:operator-scan reconciliation */ WHERE status = 'pending'
    """), {"stuck": STUCK_AFTER_SECONDS}).one()
    ok = books.ok and stuck == 0
    # one row per hour: a second run in the same hour (beat twice, beat and an operator) records nothing
    recorded = uow.connection.execute(
        insert(reconciliation_runs)
        .values(id=uuid.uuid4(), tenant_id=None, slot=func.date_trunc("hour", func.now()), ok=ok,
                wallets_checked=books.wallets_checked, mismatches=books.mismatches,
                pending_events=pending, stuck_pending_events=stuck, oldest_pending_seconds=oldest,
                created_at=func.now())
        .on_conflict_do_nothing()
        .returning(reconciliation_runs.c.id)
    ).first() is not None
    notification_ids: list[uuid.UUID] = []
    if recorded and not ok:
        from billing_core.notifications import outbox  # the operator's channels

        notification_ids = outbox.enqueue(uow, None, "reconciliation.mismatch", {
            "walletsChecked": books.wallets_checked, "mismatches": books.mismatches[:100],
            "mismatchCount": len(books.mismatches), "stuckPendingEvents": stuck,
            "oldestPendingSeconds": str(oldest)})
    uow.commit()
    return Reconciliation(ok, books.wallets_checked, books.mismatches, pending, stuck,
                          Decimal(oldest), recorded, list(notification_ids))


def latest(uow: UnitOfWork) -> dict[str, Any] | None:
    row = uow.connection.execute(
        select(reconciliation_runs).order_by(reconciliation_runs.c.slot.desc()).limit(1)).first()
    return dict(row._mapping) if row else None
