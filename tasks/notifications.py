"""Low-balance alerts and notification delivery: thin tasks over billing_core.notifications.alerts and
billing_core.notifications.outbox.

- billing.check_balance_alerts(tenant_id): the prompt path, sent after a charge settles.
- billing.scan_balance_alerts(): beat, every minute: evaluates every tenant with alert runtime().settings.
- billing.deliver_notification(notification_id, expected_attempts=None): one delivery attempt; a
  retry due within a minute is sent as a delayed message, a later one is left to the sweep.
- billing.sweep_notifications(): beat, every minute: sends a message for due notifications whose
  message was lost.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import kombu.exceptions
import redis
from sqlalchemy.exc import OperationalError

from billing_core import logs, metrics
from billing_core.bootstrap import runtime, unit_of_work
from billing_core.notifications import alerts, outbox
from tasks.app import celery_app

log = logs.get(__name__)
BROKER_ERRORS = (kombu.exceptions.OperationalError, redis.RedisError, OSError)



def notification_settings() -> outbox.NotificationSettings:
    return outbox.NotificationSettings.of(runtime().settings)


def dispatch(notification_ids: Iterable[uuid.UUID | str]) -> None:
    """Send the delivery messages of notifications just committed (by notifications.enqueue). A
    broker outage is logged, not raised: the sweep sends them later."""
    for notification_id in notification_ids:
        try:
            deliver_notification.apply_async(args=[str(notification_id), 0], retry=False)
        except BROKER_ERRORS as exc:
            log.warning("broker unavailable, notification left for the sweep", notification_id=str(notification_id),
                        error=str(exc))


@celery_app.task(name="billing.check_balance_alerts", autoretry_for=(OperationalError,), retry_backoff=True,
                 retry_backoff_max=30, max_retries=5)
def check_balance_alerts(tenant_id: str) -> int:
    """Evaluate one tenant's low-balance alerts now; returns how many notifications it enqueued."""
    with unit_of_work() as uow:
        found = alerts.check(uow, tenant_id)
    _fired(found)
    if found.fired:
        log.info("balance alerts fired", tenant_id=tenant_id, event_types=found.fired)
    return len(found.notification_ids)


def _fired(found: alerts.Evaluation) -> None:
    for event_type in found.fired:
        metrics.ALERTS_FIRED.labels(event_type=event_type).inc()
    dispatch(found.notification_ids)


@celery_app.task(name="billing.scan_balance_alerts", autoretry_for=(OperationalError,), retry_backoff=True,
                 max_retries=3)
def scan_balance_alerts() -> int:
    """The safety net: evaluate every tenant with alert settings (pages of tenants; tenants another
    evaluation holds are skipped and judged by it)."""
    found = alerts.scan(unit_of_work)
    _fired(found)
    if found.fired:
        log.info("balance alert scan", alerts_fired=len(found.fired))
    return len(found.notification_ids)


@celery_app.task(name="billing.deliver_notification", autoretry_for=(OperationalError,), retry_backoff=True,
                 retry_backoff_max=30, max_retries=5)
def deliver_notification(notification_id: str, expected_attempts: int | None = None) -> str:
    outcome = outbox.deliver(unit_of_work, uuid.UUID(notification_id), expected_attempts, notification_settings())
    _count(outcome)
    if outcome.status == "failed":
        log.warning("notification failed", notification_id=notification_id, attempt=outcome.attempt)
    if outcome.retry_in_ms is not None:
        eta = datetime.now(timezone.utc) + timedelta(milliseconds=outcome.retry_in_ms)
        try:
            deliver_notification.apply_async(args=[notification_id, outcome.expected_attempts], eta=eta,
                                             retry=False)
        except BROKER_ERRORS as exc:
            log.warning("broker unavailable, retry left for the sweep", notification_id=notification_id,
                        error=str(exc))
    return outcome.status


RESULT_LABEL = {"delivered": "delivered", "pending": "retry", "failed": "failed", "lost": "lost"}


def _count(outcome: outbox.DeliveryOutcome) -> None:
    """One sample per attempt made (a skipped message made none)."""
    result = RESULT_LABEL.get(outcome.status)
    if result is None or outcome.event_type is None or outcome.channel is None:
        return
    metrics.NOTIFICATION_DELIVERIES.labels(event_type=outcome.event_type, channel=outcome.channel,
                                           result=result).inc()
    if outcome.channel == outbox.WEBHOOK and result in ("retry", "failed"):
        metrics.WEBHOOK_DELIVERY_FAILURES.labels(event_type=outcome.event_type).inc()


@celery_app.task(name="billing.sweep_notifications")
def sweep_notifications() -> int:
    """Due notifications whose delivery message was lost (or whose retry is too far off for a
    delayed message): send one now."""
    with unit_of_work() as uow:
        due = outbox.claim_lost(uow, notification_settings())
    for notification_id, attempts in due:
        try:
            deliver_notification.apply_async(args=[str(notification_id), attempts], retry=False)
        except BROKER_ERRORS as exc:
            log.warning("broker unavailable during the notification sweep", error=str(exc))
            break
    if due:
        log.info("notification sweep", due=len(due))
    return len(due)
