"""Housekeeping jobs: the hourly reconciliation."""
from __future__ import annotations

from sqlalchemy.exc import OperationalError

from billing_core import logs, metrics
from billing_core.bootstrap import runtime, unit_of_work
from billing_core.ledger import expiry, reconciliation
from billing_core.lifecycle import quotes
from tasks.app import celery_app
from tasks.notifications import dispatch

log = logs.get(__name__)


@celery_app.task(name="billing.reconcile_ledgers")
def reconcile_ledgers() -> dict:
    with unit_of_work() as uow, runtime().read_unit_of_work() as scans:
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


@celery_app.task(name="billing.expire_credits", autoretry_for=(OperationalError,), retry_backoff=True,
                 max_retries=3)
def expire_credits() -> int:
    """End the holds past their TTL and the grants past their expiry, wallet by wallet (the charging
    path does the same for a wallet it settles). Returns how many holds and grants expired."""
    with unit_of_work() as uow:
        tenants = expiry.tenants_with_due(uow)
    expired = 0
    for tenant_id in tenants:
        try:
            with unit_of_work() as uow:
                expired += expiry.expire_due(uow, tenant_id)
        except Exception:  # one wallet's failure must not stop the others; the next run retries it
            log.exception("expiring credits failed", tenant_id=tenant_id)
    if expired:
        log.info("expired holds and grants", expired=expired, wallets=len(tenants))
    with unit_of_work() as uow:
        quotes.purge_expired(uow)
    return expired
