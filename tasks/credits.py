"""Credit lifecycle tasks: expiring holds and grants (beat, every minute) and processing Stripe events."""
from __future__ import annotations

import logging

from sqlalchemy.exc import OperationalError

from billing_core.bootstrap import Settings
from billing_core.db import UnitOfWork, engine_for
from billing_core.ledger import expiry
from billing_core.lifecycle import quotes
from billing_core.payments import stripe_events
from tasks.app import celery_app

log = logging.getLogger(__name__)
settings = Settings.from_env()


def _uow() -> UnitOfWork:
    return UnitOfWork(engine_for(settings.database_url))


@celery_app.task(name="billing.expire_credits", autoretry_for=(OperationalError,), retry_backoff=True,
                 max_retries=3)
def expire_credits() -> int:
    """End the holds past their TTL and the grants past their expiry, wallet by wallet (the charging
    path does the same for a wallet it settles). Returns how many holds and grants expired."""
    with _uow() as uow:
        tenants = expiry.tenants_with_due(uow)
    expired = 0
    for tenant_id in tenants:
        try:
            with _uow() as uow:
                expired += expiry.expire_due(uow, tenant_id)
        except Exception:  # one wallet's failure must not stop the others; the next run retries it
            log.exception("expiring the credits of %s failed", tenant_id)
    if expired:
        log.info("expired %d holds and grants in %d wallets", expired, len(tenants))
    with _uow() as uow:
        quotes.purge_expired(uow)
    return expired


@celery_app.task(name="billing.process_stripe_event", autoretry_for=(OperationalError,), retry_backoff=True,
                 max_retries=8)
def process_stripe_event(event_id: str) -> str:
    try:
        with _uow() as uow:
            status = stripe_events.process_event(uow, event_id)
    except OperationalError:
        raise  # the database: retried
    except Exception as exc:  # anything else would fail the same way again: record it for a person
        log.exception("stripe event %s failed", event_id)
        with _uow() as uow:
            stripe_events.mark_failed(uow, event_id, f"{type(exc).__name__}: {exc}")
        return "failed"
    log.info("stripe event %s: %s", event_id, status)
    return status


@celery_app.task(name="billing.sweep_stripe_events")
def sweep_stripe_events() -> int:
    """Stripe events stored but never processed (the broker was down when they arrived)."""
    with _uow() as uow:
        event_ids = stripe_events.unprocessed(uow)
    for event_id in event_ids:
        process_stripe_event.apply_async(args=[event_id])
    return len(event_ids)
