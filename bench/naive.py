"""The bench's naive charging mode, for comparison with group commit: every accepted charge is its own
Celery message and its own transaction. Not part of the service: `make bench` starts the web processes
with `bench.naive:create_app` and the worker with `--include bench.naive`."""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from flask import Flask
from sqlalchemy.exc import OperationalError

from billing_core import logs
from billing_core.bootstrap import unit_of_work
from billing_core.errors import NotFound
from billing_core.usage import charging
from tasks.app import celery_app
from tasks.usage import announce_outcomes, record_settled

log = logs.get(__name__)


@celery_app.task(name="billing.charge_usage_event", autoretry_for=(OperationalError,), retry_backoff=True,
                 retry_backoff_max=60, max_retries=8)
def charge_usage_event(tenant_id: str, usage_event_id: str) -> str:
    """One charge, one transaction."""
    try:
        with unit_of_work() as uow:
            outcome = charging.charge_usage_event(uow, tenant_id, uuid.UUID(usage_event_id))
    except NotFound:
        log.error("charge for unknown usage event dropped", usage_event_id=usage_event_id, tenant_id=tenant_id)
        return "not_found"
    event = outcome.event
    record_settled(tenant_id, [charging.Settled(event.id, event.status, event.rejection_code, event.created_at,
                                                event.request_id)])
    announce_outcomes([event.id])
    return event.status


def request_charging_one_by_one(tenant_id: str, events: Iterable[tuple[uuid.UUID, uuid.UUID]]) -> None:
    for usage_event_id, task_id in events:
        charge_usage_event.apply_async(args=[tenant_id, str(usage_event_id)], task_id=str(task_id), retry=False)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    from web.app import create_app as create_service_app
    return create_service_app({"LAD_REQUEST_CHARGING": request_charging_one_by_one, **(config or {})})
