"""Charging tasks: charge one usage event, and re-enqueue charges whose message was lost."""
from __future__ import annotations

import logging
import uuid

import redis
from sqlalchemy.exc import OperationalError

from billing_core import usage
from billing_core.config import Settings
from billing_core.db import UnitOfWork, engine_for
from billing_core.errors import NotFound

from .app import celery_app

log = logging.getLogger(__name__)
settings = Settings.from_env()
STUCK_AFTER_ENQUEUES = 5  # an operator should look at a charge retried this often
_outcome_publisher = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)


def enqueue_charge(tenant_id: str, usage_event_id: uuid.UUID, task_id: uuid.UUID) -> None:
    """Send the charge message; raises on a broker outage (the pending sweep enqueues it later)."""
    charge_usage_event.apply_async(
        args=[tenant_id, str(usage_event_id)], task_id=str(task_id), retry=False,
    )


@celery_app.task(
    name="billing.charge_usage_event",
    autoretry_for=(OperationalError,), retry_backoff=True, retry_backoff_max=60, max_retries=8,
)
def charge_usage_event(tenant_id: str, usage_event_id: str) -> str:
    try:
        with UnitOfWork(engine_for(settings.database_url)) as uow:
            outcome = usage.charge_usage_event(uow, tenant_id, uuid.UUID(usage_event_id))
    except NotFound:
        log.error("charge for unknown usage event %s of tenant %s dropped", usage_event_id, tenant_id)
        return "not_found"
    _announce_outcome(outcome.event.id)
    return outcome.event.status


def _announce_outcome(usage_event_id: uuid.UUID) -> None:
    """Wake web requests waiting on this charge; they read the outcome from PostgreSQL."""
    try:
        _outcome_publisher.publish(settings.charge_outcome_channel, str(usage_event_id))
    except redis.RedisError:
        log.warning("could not announce outcome of %s; waiting requests will time out to 202", usage_event_id)


@celery_app.task(name="billing.sweep_pending_charges")
def sweep_pending_charges() -> int:
    with UnitOfWork(engine_for(settings.database_url)) as uow:
        stale = usage.claim_stale_pending(uow, settings.pending_charge_age_seconds)
    for event in stale:
        if event.enqueue_count >= STUCK_AFTER_ENQUEUES:
            log.error("usage event %s of tenant %s still pending after %d enqueues",
                      event.usage_event_id, event.tenant_id, event.enqueue_count)
        enqueue_charge(event.tenant_id, event.usage_event_id, event.task_id)
    if stale:
        log.info("re-enqueued %d pending charges", len(stale))
    return len(stale)
