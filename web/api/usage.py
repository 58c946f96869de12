"""Usage under /api/billing: charges (one, or up to 1,000 at once), their tasks, and the usage history.
Each handler parses, calls billing_core, and answers."""
from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from flask import Response, current_app, g, request
from pydantic import BaseModel, Field

from billing_core import logs, metrics, money
from billing_core.agencies import statements, tree
from billing_core.catalog.items import line_breakdown
from billing_core.catalog.models import UNIT
from billing_core.corrections.events import Correction, list_corrections, net_cost
from billing_core.errors import ValidationFailed
from billing_core.fields import FeatureKey, TenantId
from billing_core.ledger.model import UsageEventStatus
from billing_core.usage import events, history
from billing_core.usage.commands import MAX_BATCH_ITEMS, ChargeBatchRequest, ChargeRequest
from billing_core.usage.events import Acceptance, ChargeOutcome, UsageEvent, UsageItemRecord
from web.api.answers import Answer, DecimalString, Query, TenantQuery, TimeBound, Timestamp, Uuid, ok
from web.api.catalog import PackagesLine, PricingModel, TierLine
from web.api.corrections import CorrectionOut, correction_out
from web.api.ledger import TransactionOut, transaction_out
from web.api.routing import BROKER_ERRORS, billing, documented
from web.auth import CHARGE, VIEW, authenticate, tenant_for
from web.errors import ErrorDetail, error_response
from web.limits import rate_limited
from web.parsing import json_body, parse, parse_batch_event, parse_query, path_uuid, time_bound, with_idempotency_header
from web.runtime import read_unit_of_work, request_charging, settings, unit_of_work

log = logs.get(__name__)

UsageStatus = Literal["pending", "charged", "rejected"]


class ChargeQuery(Query):
    wait: Annotated[int, Field(ge=0, le=30)] = 10
    tenantId: TenantId | None = None


class UsageQuery(Query):
    from_: Annotated[TimeBound | None, Field(alias="from")] = None
    to: TimeBound | None = None
    featureKey: FeatureKey | None = None
    status: UsageStatus | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, Field(max_length=200)] | None = None
    tenantId: TenantId | None = None


class ChargeBatchDocumented(BaseModel):
    """POST /charges: each event is the body of a POST /charge."""
    events: Annotated[list[ChargeRequest], Field(min_length=1, max_length=1000)]
    tenantId: TenantId | None = None


# --- response models and representations ----------------------------------------------------------

class Rejection(Answer):
    code: str
    message: str | None
    details: dict[str, Any]


class UsageEventOut(Answer):
    id: Uuid
    featureKey: str
    status: UsageStatus
    totalCost: DecimalString | None
    currency: str
    externalReferenceId: str | None
    createdAt: Timestamp
    occurredAt: Timestamp = Field(description="when the usage happened (the charge's occurredAt, else createdAt)")
    chargedAt: Timestamp | None
    rejection: Rejection | None = None  # only on a rejected event


class ChargeResponse(Answer):
    success: Literal[True]
    taskId: Uuid
    usageEvent: UsageEventOut
    transaction: TransactionOut


class ChargeAccepted(Answer):
    """The charge is recorded and will be charged by a worker; poll `Location` (GET /tasks/<taskId>)."""
    success: Literal[True]
    taskId: Uuid
    usageEvent: UsageEventOut


class BatchResult(Answer):
    index: int
    status: Literal["accepted", "replayed", "error"]
    taskId: Uuid | None
    usageEventId: Uuid | None
    error: ErrorDetail | None


class ChargeBatchResponse(Answer):
    success: Literal[True]
    results: list[BatchResult]


class TaskOut(Answer):
    id: Uuid
    state: UsageStatus
    usageEvent: UsageEventOut
    transaction: TransactionOut | None = None  # once charged
    error: Rejection | None = None  # once rejected


class TaskResponse(Answer):
    success: Literal[True]
    task: TaskOut


class Bucket(Answer):
    events: int
    cost: DecimalString


class UsageSummary(Answer):
    totalEvents: int
    totalCost: DecimalString
    byFeature: dict[str, Bucket]
    byStatus: dict[str, Bucket]


class UsagePage(Answer):
    events: list[UsageEventOut]
    summary: UsageSummary
    nextCursor: str | None


class UsageResponse(Answer):
    success: Literal[True]
    usage: UsagePage


class UsageItemOut(Answer):
    # a charged item as the tenant sees it: what it paid and why (never the provider's cost)
    category: str
    provider: str
    model: str
    unit: str
    quantity: DecimalString
    unitPrice: DecimalString | None
    totalCost: DecimalString | None
    pricingModel: PricingModel = "unit"
    billedQuantity: DecimalString | None = None
    tiers: list[TierLine] | None = None
    packages: PackagesLine | None = None
    burstMultiplier: DecimalString | None = None  # a burst call's settlement: unit price and cost multiplied


class UsageEventDetail(UsageEventOut):
    metadata: dict[str, Any]
    items: list[UsageItemOut]
    taskId: Uuid
    transactionId: Uuid | None
    corrections: list[CorrectionOut] = Field(default_factory=list)
    # the charged cost less what corrections credited back plus what they debited (refunds not included)
    netCost: DecimalString | None = None
    agencyCost: DecimalString | None = Field(
        None, description="only for an agency's token naming its sub-account's event: what LAD charged the agency")


class UsageEventResponse(Answer):
    success: Literal[True]
    usageEvent: UsageEventDetail


def _event_fields(e: UsageEvent) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": e.id, "featureKey": e.feature_key, "status": e.status, "totalCost": e.total_cost,
        "currency": e.currency, "externalReferenceId": e.external_reference_id, "createdAt": e.created_at,
        "occurredAt": e.occurred, "chargedAt": e.charged_at,
    }
    if e.rejection_code:
        fields["rejection"] = rejection(e)
    return fields


def usage_event_out(e: UsageEvent) -> UsageEventOut:
    return UsageEventOut(**_event_fields(e))


def rejection(e: UsageEvent) -> Rejection:
    return Rejection(code=e.rejection_code, message=e.rejection_reason, details=e.rejection_details or {})


def usage_item_out(i: UsageItemRecord) -> UsageItemOut:
    pricing = i.pricing or {}
    billed = money.to_decimal(pricing["billedQuantity"]) if "billedQuantity" in pricing else i.quantity
    return UsageItemOut(category=i.category, provider=i.provider, model=i.model, unit=i.unit, quantity=i.quantity,
                        unitPrice=i.unit_price, totalCost=i.cost,
                        **line_breakdown(pricing.get("pricingModel", UNIT), billed, pricing.get("parts", [])),
                        **({"burstMultiplier": money.to_decimal(pricing["burstMultiplier"])}
                           if "burstMultiplier" in pricing else {}))


def usage_event_detail(outcome: ChargeOutcome, chain: list[Correction] | None = None,
                       net: Any = None, **extra: Any) -> UsageEventDetail:
    net = outcome.event.total_cost if net is None else net
    return UsageEventDetail(**_event_fields(outcome.event), metadata=outcome.event.metadata,
                            items=[usage_item_out(i) for i in outcome.items], taskId=outcome.event.task_id,
                            transactionId=outcome.debit.id if outcome.debit else None,
                            corrections=[correction_out(c) for c in chain or []], netCost=net, **extra)


def summary_out(s: history.Summary) -> UsageSummary:
    def buckets(by: dict[str, tuple[int, Any]]) -> dict[str, Bucket]:
        return {name: Bucket(events=count, cost=cost) for name, (count, cost) in sorted(by.items())}

    return UsageSummary(totalEvents=s.total_events, totalCost=s.total_cost, byFeature=buckets(s.by_feature),
                        byStatus=buckets(s.by_status))


def task_out(outcome: ChargeOutcome) -> TaskOut:
    fields: dict[str, Any] = {"id": outcome.event.task_id, "state": outcome.event.status,
                              "usageEvent": usage_event_out(outcome.event)}
    if outcome.debit is not None:
        fields["transaction"] = transaction_out(outcome.debit)
    if outcome.event.rejection_code:
        fields["error"] = rejection(outcome.event)
    return TaskOut(**fields)


def batch_result(index: int, a: Acceptance) -> dict[str, Any]:
    """A BatchResult's fields: up to 1,000 of them are validated at once by ChargeBatchResponse, which is
    about twice as fast as constructing each model (or model_construct) on the batch's hot path."""
    if a.error is not None:
        return {"index": index, "status": "error", "taskId": None, "usageEventId": None,
                "error": {"code": a.error.code, "message": a.error.message, "details": a.error.details}}
    assert a.event is not None
    return {"index": index, "status": "replayed" if a.replayed else "accepted", "taskId": a.event.task_id,
            "usageEventId": a.event.id, "error": None}


# --- routes ---------------------------------------------------------------------------------------


@billing.post("/charge")
@documented({200: ChargeResponse, 202: ChargeAccepted}, 404, 402, 403, 409, 410, 413, 422,
            json=ChargeRequest, query=ChargeQuery)
@rate_limited(CHARGE)  # never the depleted limit: usage that happened is always recorded
def post_charge() -> Response:
    principal = authenticate(CHARGE)
    query = parse_query(ChargeQuery)
    command = parse(ChargeRequest, with_idempotency_header(json_body()))
    tenant_id = tenant_for(principal, _one_tenant(command.tenantId, query.tenantId))
    wait = 0 if "respond-async" in request.headers.get("Prefer", "") else query.wait
    with unit_of_work() as uow:
        outcome = events.accept_charge(uow, tenant_id, command, user_id=principal.subject, request_id=g.request_id,
                                       late_usage_max_days=settings().late_usage_max_days)
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
@documented({202: ChargeBatchResponse}, 404, 403, 413, json=ChargeBatchDocumented)
@rate_limited(CHARGE, weight=_batch_weight)
def post_charges() -> Response:
    """Submit up to 1,000 charges at once: durable in one transaction, each with its own outcome."""
    principal = authenticate(CHARGE)
    batch = parse(ChargeBatchRequest, json_body())
    items = sum(len(e["items"]) for e in batch.events if isinstance(e.get("items"), list))
    if items > MAX_BATCH_ITEMS:
        raise ValidationFailed("events", f"a batch may hold at most {MAX_BATCH_ITEMS} items, not {items}")
    tenant_id = tenant_for(principal, _one_tenant(batch.tenantId, parse_query(TenantQuery).tenantId))
    commands = [parse_batch_event(index, event, tenant_id) for index, event in enumerate(batch.events)]
    with unit_of_work() as uow:
        acceptances = events.accept_charges(uow, tenant_id, commands, user_id=principal.subject,
                                           request_id=g.request_id,
                                           late_usage_max_days=settings().late_usage_max_days)
    _log_accepted(tenant_id, [a.event for a in acceptances if a.event is not None and not a.replayed])
    accepted = [(a.event.id, a.event.task_id) for a in acceptances if a.event is not None and not a.replayed]
    if accepted:
        _request_charging(tenant_id, accepted)
    return ok(ChargeBatchResponse, 202, results=[batch_result(index, a) for index, a in enumerate(acceptances)])


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
        response = ok(ChargeAccepted, 202, replayed, taskId=task_id, usageEvent=usage_event_out(event))
        response.headers["Location"] = f"/api/billing/tasks/{task_id}"
        return response
    if event.rejection_code:
        details = {**(event.rejection_details or {}), "usageEventId": str(event.id), "taskId": task_id}
        response = error_response(event.rejection_code, event.rejection_reason or "charge rejected", details)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response
    assert outcome.debit is not None
    return ok(ChargeResponse, 200, replayed, taskId=task_id, usageEvent=usage_event_out(event),
              transaction=transaction_out(outcome.debit))


@billing.get("/tasks/<task_id>")
@documented({200: TaskResponse}, 403, 404, query=TenantQuery)
@rate_limited(VIEW)
def get_task(task_id: str) -> Response:
    principal = authenticate()
    if not (principal.has(CHARGE) or principal.has(VIEW)):
        authenticate(CHARGE)  # answers 403 naming the capability
    tenant_id = tenant_for(principal, parse_query(TenantQuery).tenantId)
    with unit_of_work() as uow:
        outcome = events.find_by_task(uow, tenant_id, path_uuid(task_id, "task"))
    return ok(TaskResponse, task=task_out(outcome))


@billing.get("/usage")
@documented({200: UsageResponse}, 404, 403, query=UsageQuery)
@rate_limited(VIEW)
def get_usage() -> Response:
    principal = authenticate(VIEW)
    query = parse_query(UsageQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    filters = history.UsageFilter(
        start=time_bound(query.from_, "from", end=False), end=time_bound(query.to, "to", end=True),
        feature_key=query.featureKey, status=query.status,
    )
    with read_unit_of_work() as uow:
        events, next_cursor = history.list_usage_events(uow, tenant_id, filters, limit=query.limit, cursor=query.cursor)
        summary = history.summarize_usage(uow, tenant_id, filters)
    return ok(UsageResponse, usage=UsagePage(events=[usage_event_out(e) for e in events],
                                             summary=summary_out(summary), nextCursor=next_cursor))


@billing.get("/usage/<usage_event_id>")
@documented({200: UsageEventResponse}, 403, 404, query=TenantQuery)
@rate_limited(VIEW)
def get_usage_event(usage_event_id: str) -> Response:
    principal = authenticate(VIEW)
    tenant_id = tenant_for(principal, parse_query(TenantQuery).tenantId)
    with unit_of_work() as uow:
        outcome = events.load_outcome(uow, tenant_id, path_uuid(usage_event_id, "usage event"), with_items=True)
        chain = list_corrections(uow, tenant_id, outcome.event.id)
        net = net_cost(uow, tenant_id, outcome.event)
        extra: dict[str, Any] = {}
        if tenant_id != principal.tenant_id and tree.agency_of(uow, tenant_id) == principal.tenant_id:
            # the agency reading its sub-account's event sees its own cost beside the resale price
            extra["agencyCost"] = statements.agency_cost(uow, principal.tenant_id, outcome.event.id)
    return ok(UsageEventResponse, usageEvent=usage_event_detail(outcome, chain, net, **extra))


