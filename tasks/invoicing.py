"""Monthly invoices: the rollup of the month before, run by beat on the 1st at 00:15 UTC (a little after
midnight, so the transactions of the month's last moments have committed; the session timeouts of
billing_core.db bound them). Safe to run twice or concurrently: a second run writes nothing."""
from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError

from billing_core import logs, metrics
from billing_core.bootstrap import unit_of_work
from billing_core.errors import ValidationFailed
from billing_core.invoicing import invoices
from billing_core.notifications import outbox
from tasks.app import celery_app
from tasks.notifications import dispatch

log = logs.get(__name__)

SETTLING_RETRY_SECONDS = 60



def announce_finalized(period: invoices.Period, created: list[tuple[Any, str]]) -> None:
    """`invoice.finalized` to each tenant's alert channels. After the rollup's commit: a worker lost in
    between loses these notifications, never an invoice (they are listed by GET /invoices)."""
    if not created:
        return
    with unit_of_work() as uow:
        ids = [notification_id for invoice_id, tenant in created
               for notification_id in outbox.enqueue(uow, tenant, "invoice.finalized",
                                                            {"invoiceId": str(invoice_id), "period": period.label})]
        uow.commit()
    dispatch(ids)


# A month of every tenant can take longer than the default task limits (60 s); its SQL has its own
# statement timeout (billing_core.invoicing.invoices). A redelivered or concurrent run waits for the first one's
# advisory lock and then writes nothing.
@celery_app.task(name="billing.rollup_invoices", bind=True, autoretry_for=(OperationalError,), retry_backoff=True,
                 max_retries=60, soft_time_limit=1800, time_limit=1900)
def rollup_invoices(self: Any, period: str | None = None, tenant_id: str | None = None) -> dict[str, Any]:
    """Finalize the invoices of `period` (YYYY-MM; default: the month before now, as beat runs it) for
    every tenant, or one. Returns what it created (hook `invoice.finalized` notifications on invoiceIds)."""
    try:
        with unit_of_work() as uow:
            target = invoices.Period.parse(period) if period else invoices.previous_period(uow.now())
        with unit_of_work() as uow:
            result = invoices.rollup(uow, target, tenant_id=tenant_id, task_id=self.request.id)
    except ValidationFailed as exc:
        log.error("invoice rollup not run", reason=exc.message)
        return {"period": period, "error": exc.code, "message": exc.message}
    except invoices.PeriodNotClosed as exc:
        if exc.details.get("state") == "settling":
            log.info("invoice rollup waits", period=exc.details.get("period"), reason=exc.message)
            raise self.retry(exc=exc, countdown=SETTLING_RETRY_SECONDS, max_retries=60) from None
        log.error("invoice rollup not run", reason=exc.message)
        return {"period": exc.details.get("period"), "error": exc.code, "message": exc.message}
    metrics.INVOICE_ROLLUP_SECONDS.observe(result.milliseconds / 1000)
    announce_finalized(target, result.created)
    log.info("invoice rollup", period=target.label, invoices=len(result.created), lines=result.lines_created,
             duration_ms=result.milliseconds)
    return {"period": target.label, "tenantId": tenant_id, "invoicesCreated": len(result.created),
            "linesCreated": result.lines_created, "milliseconds": result.milliseconds,
            "invoiceIds": [str(i) for i in result.invoice_ids], "refused": result.refused}
