"""Housekeeping jobs: the hourly reconciliation."""
from __future__ import annotations

from billing_core import logs, metrics
from billing_core.bootstrap import Settings
from billing_core.db import UnitOfWork, engine_for, read_engine
from billing_core.ledger import reconciliation
from tasks.app import celery_app
from tasks.notifications import dispatch

log = logs.get(__name__)
settings = Settings.from_env()


@celery_app.task(name="billing.reconcile_ledgers")
def reconcile_ledgers() -> dict:
    with UnitOfWork(engine_for(settings.database_url)) as uow, UnitOfWork(read_engine(settings)) as scans:
        result = reconciliation.reconcile(uow, scans)
    dispatch(result.notification_ids)
    metrics.RECONCILIATION_MISMATCHES.set(len(result.mismatches) + result.stuck_pending_events)
    metrics.RECONCILIATION_RUNS.labels("ok" if result.ok else "mismatch").inc()
    if result.ok:
        log.info("reconciliation ok", wallets=result.wallets_checked, pending=result.pending_events)
    else:
        log.error("reconciliation found mismatches", wallets=result.wallets_checked,
                  mismatches=len(result.mismatches), stuck_pending=result.stuck_pending_events,
                  recorded=result.recorded)
    return {"ok": result.ok, "walletsChecked": result.wallets_checked, "mismatches": len(result.mismatches),
            "stuckPendingEvents": result.stuck_pending_events, "recorded": result.recorded}
