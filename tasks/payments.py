"""Auto top-up and recurring allocation tasks: thin over billing_core.payments.auto_topup and
billing_core.ledger.allocations.

- check_auto_topup(tenant_id): called by the charging task right after a settled group.
- billing.pay_auto_topup(tenant_id, attempt_id): one try at paying an attempt; a try that cannot
  reach Stripe sends itself again after a backoff (same attempt, same idempotency key).
- billing.scan_auto_topups(): beat, every minute: the check of rules saved before LAD owned the
  tenants' Stripe customers, the safety net for the trigger, and a new message for pending
  attempts whose message was lost.
- billing.grant_allocations(): beat, 00:05 UTC on the 1st: each allocation once per month.
"""
from __future__ import annotations

import uuid

from sqlalchemy.exc import OperationalError

from billing_core import logs, metrics
from billing_core.bootstrap import runtime, unit_of_work
from billing_core.ledger import allocations
from billing_core.payments import stripe_events
from billing_core.payments.auto_topup import attempts
from billing_core.payments.auto_topup.customers import StripeUnavailable
from billing_core.payments.auto_topup.payment import StripeGateway, pay_attempt
from tasks.app import celery_app
from tasks.notifications import BROKER_ERRORS, dispatch

log = logs.get(__name__)
_gateway: StripeGateway | None = None



def gateway() -> StripeGateway | None:
    """The process's Stripe client; None without STRIPE_SECRET_KEY (auto top-up is then off)."""
    global _gateway
    key = runtime().settings.stripe_secret_key
    if _gateway is None and key:
        _gateway = StripeGateway(key, runtime().settings.stripe_api_base)
    return _gateway


def _started(found: attempts.Evaluation) -> None:
    """After the commit that started them: send each attempt's payment message, dispatch notifications."""
    for _ in range(found.capped):
        metrics.AUTO_TOPUP_ATTEMPTS.labels(outcome="capped").inc()
    dispatch(found.notification_ids)
    for tenant_id, attempt_id in found.attempts:
        metrics.AUTO_TOPUP_ATTEMPTS.labels(outcome="started").inc()
        log.info("auto top-up started", tenant_id=tenant_id, attempt_id=str(attempt_id))
        _send(tenant_id, attempt_id)


def _send(tenant_id: str, attempt_id: uuid.UUID, countdown: int | None = None) -> None:
    try:
        pay_auto_topup.apply_async(args=[tenant_id, str(attempt_id)], countdown=countdown, retry=False)
    except BROKER_ERRORS as exc:  # the attempt is pending in PostgreSQL: the scan sends it again
        log.warning("broker unavailable, auto top-up left for the scan", attempt_id=str(attempt_id), error=str(exc))


def check_auto_topup(tenant_id: str) -> None:
    """The prompt trigger after a settled charge group (one indexed read when the tenant has no rule)."""
    if gateway() is None:
        return
    with unit_of_work() as uow:
        found = attempts.evaluate(uow, tenant_id)
    _started(found)


@celery_app.task(name="billing.pay_auto_topup", autoretry_for=(OperationalError,), retry_backoff=True,
                 retry_backoff_max=30, max_retries=5)
def pay_auto_topup(tenant_id: str, attempt_id: str) -> str:
    client = gateway()
    if client is None:
        log.error("auto top-up attempt without STRIPE_SECRET_KEY; left pending", attempt_id=attempt_id)
        return "unconfigured"
    attempt_uuid = uuid.UUID(attempt_id)
    with unit_of_work() as uow:
        claimed = attempts.start_try(uow, tenant_id, attempt_uuid)
    if claimed is None:
        return "finished"  # a redelivered or duplicate message: the attempt is done
    result = pay_attempt(unit_of_work, client, claimed)
    outcome = result.outcome
    if outcome == "succeeded":
        assert result.payment_intent_id is not None and result.paid is not None
        with unit_of_work() as uow:
            attempts.succeed(uow, tenant_id, attempt_uuid, result.payment_intent_id, result.paid)
    elif outcome == "failed" or claimed.tries >= runtime().settings.auto_topup_max_tries:
        # a refused payment, or no answer after every try: the breaker opens either way (a payment
        # that went through unseen is still credited by its payment_intent.succeeded webhook)
        code = {"failed": result.code or "failed", "processing": "payment_still_processing"}.get(
            outcome, "stripe_unreachable")
        with unit_of_work() as uow:
            dispatch(attempts.fail(uow, tenant_id, attempt_uuid, code, result.message or code,
                                   result.payment_intent_id))
        log.warning("auto top-up failed", tenant_id=tenant_id, attempt_id=attempt_id, code=code,
                    tries=claimed.tries)
        outcome = "failed"
    else:
        delay = min(runtime().settings.auto_topup_retry_base_seconds * 2 ** (claimed.tries - 1), 600)
        with unit_of_work() as uow:
            attempts.postpone(uow, tenant_id, attempt_uuid, result.message or outcome, delay,
                              result.payment_intent_id)
        log.warning("auto top-up try postponed", tenant_id=tenant_id, attempt_id=attempt_id, reason=result.message,
                    tries=claimed.tries, retry_in=delay)
        _send(tenant_id, attempt_uuid, countdown=delay)
    metrics.AUTO_TOPUP_ATTEMPTS.labels(outcome=outcome).inc()
    return outcome


@celery_app.task(name="billing.scan_auto_topups", autoretry_for=(OperationalError,), retry_backoff=True,
                 max_retries=3)
def scan_auto_topups() -> int:
    """Every tenant at or below its threshold gets its attempt (tenants being evaluated are
    skipped, their evaluation judges them); pending attempts whose message was lost are sent again."""
    client = gateway()
    if client is None:
        return 0
    try:  # rules saved before LAD owned the tenants' Stripe customers: checked whatever the balance
        dispatch(attempts.verify_saved(unit_of_work, client.customers))
    except StripeUnavailable as exc:
        log.warning("saved auto top-up rules not checked: Stripe unreachable", error=str(exc))
    found = attempts.Evaluation()
    after: str | None = ""
    while after is not None:
        with unit_of_work() as uow:
            page, after = attempts.scan_page(uow, after)
        found += page
    _started(found)
    with unit_of_work() as uow:
        lost = attempts.claim_lost(uow)
    for tenant_id, attempt_id in lost:
        _send(tenant_id, attempt_id)
    return len(found.attempts) + len(lost)


@celery_app.task(name="billing.grant_allocations", autoretry_for=(OperationalError,), retry_backoff=True,
                 max_retries=3)
def grant_allocations() -> int:
    granted = allocations.grant_due(unit_of_work)
    if granted:
        log.info("allocations granted", granted=granted)
    return granted


@celery_app.task(name="billing.process_stripe_event", autoretry_for=(OperationalError,), retry_backoff=True,
                 max_retries=8)
def process_stripe_event(event_id: str) -> str:
    try:
        with unit_of_work() as uow:
            status = stripe_events.process_event(uow, event_id)
    except OperationalError:
        raise  # the database: retried
    except Exception as exc:  # anything else would fail the same way again: record it for a person
        log.exception("stripe event failed", stripe_event_id=event_id)
        with unit_of_work() as uow:
            stripe_events.mark_failed(uow, event_id, f"{type(exc).__name__}: {exc}")
        return "failed"
    log.info("stripe event processed", stripe_event_id=event_id, status=status)
    return status


@celery_app.task(name="billing.sweep_stripe_events")
def sweep_stripe_events() -> int:
    """Stripe events stored but never processed (the broker was down when they arrived)."""
    with unit_of_work() as uow:
        event_ids = stripe_events.unprocessed(uow)
    for event_id in event_ids:
        process_stripe_event.apply_async(args=[event_id])
    return len(event_ids)
