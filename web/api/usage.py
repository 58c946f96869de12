"""The billing API under /api/billing: each handler parses, calls billing_core, and answers."""
from __future__ import annotations

import uuid

from flask import Response, current_app, g, request

from billing_core import logs, metrics
from billing_core.errors import ValidationFailed
from billing_core.ledger.model import UsageEventStatus
from billing_core.usage import events, history
from billing_core.usage.commands import MAX_BATCH_ITEMS, ChargeBatchRequest, ChargeRequest
from billing_core.usage.events import ChargeOutcome
from web import representations as show
from web import schemas
from web.api.routing import BROKER_ERRORS, billing, documented, ok
from web.auth import CHARGE, VIEW, authenticate, tenant_for
from web.errors import error_response
from web.limits import rate_limited
from web.parsing import json_body, parse, parse_batch_event, parse_query, path_uuid, time_bound, with_idempotency_header
from web.runtime import read_unit_of_work, request_charging, unit_of_work

log = logs.get(__name__)


@billing.post("/charge")
@documented({200: schemas.ChargeResponse, 202: schemas.ChargeAccepted}, 402, 403, 409, 410, 413, 422,
            json=ChargeRequest, query=schemas.ChargeQuery)
@rate_limited(CHARGE)  # never the depleted limit: usage that happened is always recorded
def post_charge() -> Response:
    principal = authenticate(CHARGE)
    query = parse_query(schemas.ChargeQuery)
    command = parse(ChargeRequest, with_idempotency_header(json_body()))
    tenant_id = tenant_for(principal, _one_tenant(command.tenantId, query.tenantId))
    wait = 0 if "respond-async" in request.headers.get("Prefer", "") else query.wait
    with unit_of_work() as uow:
        outcome = events.accept_charge(uow, tenant_id, command, user_id=principal.subject, request_id=g.request_id)
    event = outcome.event
    _log_accepted(tenant_id, [outcome.event] if not outcome.replayed else [])
    if not outcome.replayed and not _request_charging(tenant_id, [(event.id, event.task_id)]):
        wait = 0  # no worker will hear of it before the sweep
    if event.status == UsageEventStatus.PENDING and wait > 0:
        outcome = _wait_for_outcome(tenant_id, outcome, wait)
    return _charge_response(outcome, replayed=outcome.replayed)


def _batch_weight() -> int:
    """A batch counts against the rate limits as its number of events."""
    try:
        events = json_body().get("events")
    except ValidationFailed:
        return 1  # the handler answers 400 for it
    return len(events) if isinstance(events, list) and events else 1


@billing.post("/charges")
@documented({202: schemas.ChargeBatchResponse}, 403, 413, json=schemas.ChargeBatchDocumented)
@rate_limited(CHARGE, weight=_batch_weight)
def post_charges() -> Response:
    """Submit up to 1,000 charges at once: durable in one transaction, each with its own outcome."""
    principal = authenticate(CHARGE)
    batch = parse(ChargeBatchRequest, json_body())
    items = sum(len(e["items"]) for e in batch.events if isinstance(e.get("items"), list))
    if items > MAX_BATCH_ITEMS:
        raise ValidationFailed("events", f"a batch may hold at most {MAX_BATCH_ITEMS} items, not {items}")
    tenant_id = tenant_for(principal, _one_tenant(batch.tenantId, parse_query(schemas.TenantQuery).tenantId))
    commands = [parse_batch_event(index, event, tenant_id) for index, event in enumerate(batch.events)]
    with unit_of_work() as uow:
        acceptances = events.accept_charges(uow, tenant_id, commands, user_id=principal.subject,
                                           request_id=g.request_id)
    _log_accepted(tenant_id, [a.event for a in acceptances if a.event is not None and not a.replayed])
    accepted = [(a.event.id, a.event.task_id) for a in acceptances if a.event is not None and not a.replayed]
    if accepted:
        _request_charging(tenant_id, accepted)
    return ok(202, results=[show.batch_result(index, a) for index, a in enumerate(acceptances)])


def _log_accepted(tenant_id: str, accepted: list[events.UsageEvent]) -> None:
    """One log line per request, not per charge (1,000 lines per batch were ~20% of the web's CPU,
    bench/PROFILE.md): its ids space-separated, so a grep for any one of them finds the line."""
    metrics.CHARGES_ACCEPTED.inc(len(accepted))
    if not accepted:
        return
    reservations = " ".join(str(e.reservation_id) for e in accepted if e.reservation_id)
    log.info("charge accepted", tenant_id=tenant_id, charges=len(accepted),
             usage_event_id=" ".join(str(e.id) for e in accepted),
             charge_task_id=" ".join(str(e.task_id) for e in accepted), reservation_id=reservations or None)


def _one_tenant(in_body: str | None, in_query: str | None) -> str | None:
    if in_body and in_query and in_body != in_query:
        raise ValidationFailed("tenantId", "the body and the query name different tenants")
    return in_body or in_query


def _request_charging(tenant_id: str, events: list[tuple[uuid.UUID, uuid.UUID]]) -> bool:
    try:
        request_charging(tenant_id, events)
        return True
    except BROKER_ERRORS as exc:
        # durable already: the pending sweep enqueues them once the broker is back
        log.warning("broker unavailable, charges left for the pending sweep", charges=len(events), error=str(exc))
        return False


def _wait_for_outcome(tenant_id: str, outcome: ChargeOutcome, wait: int) -> ChargeOutcome:
    latest = outcome

    def settled() -> bool:
        nonlocal latest
        with unit_of_work() as uow:
            latest = events.load_outcome(uow, tenant_id, outcome.event.id)
        return latest.event.status != UsageEventStatus.PENDING

    current_app.extensions["lad_outcomes"].wait(str(outcome.event.id), wait, settled)
    return ChargeOutcome(latest.event, latest.debit, latest.items, replayed=outcome.replayed)


def _charge_response(outcome: ChargeOutcome, *, replayed: bool) -> Response:
    event = outcome.event
    task_id = str(event.task_id)
    if event.status == UsageEventStatus.PENDING:
        response = ok(202, replayed, taskId=task_id, usageEvent=show.usage_event(event))
        response.headers["Location"] = f"/api/billing/tasks/{task_id}"
        return response
    if event.rejection_code:
        details = {**(event.rejection_details or {}), "usageEventId": str(event.id), "taskId": task_id}
        response = error_response(event.rejection_code, event.rejection_reason or "charge rejected", details)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response
    assert outcome.debit is not None
    return ok(200, replayed, taskId=task_id, usageEvent=show.usage_event(event),
              transaction=show.transaction(outcome.debit))


@billing.get("/tasks/<task_id>")
@documented({200: schemas.TaskResponse}, 403, 404, query=schemas.TenantQuery)
@rate_limited(VIEW)
def get_task(task_id: str) -> Response:
    principal = authenticate()
    if not (principal.has(CHARGE) or principal.has(VIEW)):
        authenticate(CHARGE)  # answers 403 naming the capability
    tenant_id = tenant_for(principal, parse_query(schemas.TenantQuery).tenantId)
    with unit_of_work() as uow:
        outcome = events.find_by_task(uow, tenant_id, path_uuid(task_id, "task"))
    return ok(task=show.task(outcome))


@billing.get("/usage")
@documented({200: schemas.UsageResponse}, 403, query=schemas.UsageQuery)
@rate_limited(VIEW)
def get_usage() -> Response:
    principal = authenticate(VIEW)
    query = parse_query(schemas.UsageQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    filters = history.UsageFilter(
        start=time_bound(query.from_, "from", end=False), end=time_bound(query.to, "to", end=True),
        feature_key=query.featureKey, status=query.status,
    )
    with read_unit_of_work() as uow:
        events, next_cursor = history.list_usage_events(uow, tenant_id, filters, limit=query.limit, cursor=query.cursor)
        summary = history.summarize_usage(uow, tenant_id, filters)
    return ok(usage={"events": [show.usage_event(e) for e in events], "summary": show.summary(summary),
                     "nextCursor": next_cursor})


@billing.get("/usage/<usage_event_id>")
@documented({200: schemas.UsageEventResponse}, 403, 404, query=schemas.TenantQuery)
@rate_limited(VIEW)
def get_usage_event(usage_event_id: str) -> Response:
    principal = authenticate(VIEW)
    tenant_id = tenant_for(principal, parse_query(schemas.TenantQuery).tenantId)
    with unit_of_work() as uow:
        outcome = events.load_outcome(uow, tenant_id, path_uuid(usage_event_id, "usage event"), with_items=True)
    return ok(usageEvent=show.usage_event_detail(outcome))


