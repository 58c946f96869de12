"""Charging tasks. In group mode a message means "there is work for wallet W": accepting a charge
sends one only if none is outstanding for that wallet, and the task settles the wallet's pending
events in groups. (The bench's naive mode, one message and one transaction per charge, is bench/naive.py.)"""
from __future__ import annotations

import contextlib
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timezone

import redis
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from billing_core import logs, metrics
from billing_core.agencies.tree import agency_of
from billing_core.bootstrap import runtime, unit_of_work
from billing_core.usage import charging
from tasks.app import celery_app
from tasks.notifications import check_balance_alerts
from tasks.payments import check_auto_topup

log = logs.get(__name__)
STUCK_AFTER_ENQUEUES = 5  # an operator should look at a charge retried this often
WAKE_TTL_SECONDS = 30  # a wake-up whose worker died is forgotten after this; the sweep covers the rest
GROUPS_PER_TASK = 20  # then the task hands the wallet to a fresh message, so other wallets get a turn


def _wake_key(tenant_id: str) -> str:
    return f"{runtime().settings.queue}:wake:{tenant_id}"


def request_charging(tenant_id: str, events: Iterable[tuple[uuid.UUID, uuid.UUID]]) -> None:
    """Ask the workers to charge these newly accepted (usage event id, task id) pairs. Raises on a
    broker or Redis outage; the events are durable and the pending sweep enqueues them later."""
    key = _wake_key(tenant_id)
    try:
        if not runtime().redis.set(key, "1", nx=True, ex=WAKE_TTL_SECONDS):
            return  # a wake-up for this wallet is outstanding; its worker will find these events
        charge_wallet.apply_async(args=[tenant_id], retry=False)
    except BaseException:
        # no message may have gone out: let the next acceptance send one (the sweep covers a failed delete)
        with contextlib.suppress(redis.RedisError):
            runtime().redis.delete(key)
        raise


@celery_app.task(name="billing.charge_wallet", autoretry_for=(OperationalError, PoolTimeout),
                 retry_backoff=True, retry_backoff_max=60, max_retries=8)
def charge_wallet(tenant_id: str) -> int:
    """Settle the wallet's pending charges, group by group."""
    settled = 0
    for n in range(GROUPS_PER_TASK):
        with unit_of_work() as uow:
            group = charging.charge_pending_batch(uow, tenant_id, runtime().settings.charge_batch_size,
                                                  on_locked=(lambda: _clear_wake(tenant_id)) if n == 0 else None)
        settled += len(group)
        record_settled(tenant_id, group)
        announce_outcomes([s.usage_event_id for s in group])
        if len(group) < runtime().settings.charge_batch_size:
            break
    else:
        charge_wallet.apply_async(args=[tenant_id])
    if settled:
        # a sub-account's charges moved its agency's wallet too: its alerts and auto top-up as well
        with unit_of_work() as uow:
            agency = agency_of(uow, tenant_id)
        for moved in (tenant_id, *([agency] if agency is not None else [])):
            _check_alerts(moved)
            _check_auto_topup(moved)
    return settled


def _clear_wake(tenant_id: str) -> None:
    """Cleared once this task holds the wallet's lock and before it claims: anything accepted from now on
    sends a new wake-up (what committed before is in the claim). Not at the task's start: a second message
    for a wallet another worker is settling would then be sent at the next acceptance, and a third, each
    taking a worker process to wait on the same lock while other wallets' messages queue (issue 23's call
    admission under a hot wallet). Now at most one waits per wallet: its wake-up stays set while it waits."""
    try:
        runtime().redis.delete(_wake_key(tenant_id))
    except redis.RedisError:
        log.warning("could not clear the wake-up", tenant_id=tenant_id)


def _check_alerts(tenant_id: str) -> None:
    """Low-balance alerts right after the charges that may cross a threshold (one cheap read when the
    tenant has no alerts); the beat scan is the safety net, so a failure here is only logged."""
    try:
        check_balance_alerts(tenant_id)
    except Exception:
        log.exception("checking the balance alerts failed; the beat scan will", tenant_id=tenant_id)


def _check_auto_topup(tenant_id: str) -> None:
    """Auto top-up right after the charges that may cross its threshold; the minute scan is the
    safety net, so a failure here is only logged."""
    try:
        check_auto_topup(tenant_id)
    except Exception:
        log.exception("checking the auto top-up failed; the minute scan will", tenant_id=tenant_id)


def record_settled(tenant_id: str, group: list[charging.Settled]) -> None:
    """Metrics, and one log line per request id and outcome in the group (not per charge: that was
    ~28% of the worker's time, bench/PROFILE.md), carrying the request id that accepted them and
    their ids space-separated, so a grep for a request id or an event id finds its line."""
    now = datetime.now(timezone.utc)
    lines: dict[tuple[str | None, str, str | None], list[str]] = defaultdict(list)
    for settled in group:
        metrics.CHARGE_LATENCY.observe(max(0.0, (now - settled.accepted_at).total_seconds()))
        lines[(settled.request_id, settled.status, settled.rejection_code)].append(str(settled.usage_event_id))
    for (request_id, status, rejection_code), ids in lines.items():
        metrics.CHARGES_SETTLED.labels(status, rejection_code or "").inc(len(ids))
        log.info("charge settled", tenant_id=tenant_id, charges=len(ids), usage_event_id=" ".join(ids),
                 status=status, rejection_code=rejection_code, accepted_by=request_id)


def announce_outcomes(usage_event_ids: list[uuid.UUID]) -> None:
    """Wake web requests waiting on these charges; they read the outcomes from PostgreSQL."""
    if not usage_event_ids:
        return
    try:
        runtime().redis.publish(runtime().settings.charge_outcome_channel, " ".join(str(i) for i in usage_event_ids))
    except redis.RedisError:
        log.warning("could not announce outcomes; waiting requests will time out to 202", charges=len(usage_event_ids))


@celery_app.task(name="billing.sweep_pending_charges")
def sweep_pending_charges() -> int:
    with unit_of_work() as uow:
        stale = charging.claim_stale_pending(uow, runtime().settings.pending_charge_age_seconds)
    for event in stale:
        if event.enqueue_count >= STUCK_AFTER_ENQUEUES:
            log.error("usage event still pending after many enqueues", usage_event_id=str(event.usage_event_id),
                      tenant_id=event.tenant_id, enqueues=event.enqueue_count)
    for tenant_id in sorted({event.tenant_id for event in stale}):
        charge_wallet.apply_async(args=[tenant_id])  # direct: a stale wake-up key must not hold it back
    if stale:
        log.info("re-enqueued pending charges", charges=len(stale))
    return len(stale)
