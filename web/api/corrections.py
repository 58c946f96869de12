"""Corrections (issue 20): POST /usage/<id>/corrections and re-rates of a period (billing.admin)."""
from __future__ import annotations

from typing import Any, Literal

from flask import Response
from pydantic import Field

from billing_core import logs
from billing_core.corrections import rerates
from billing_core.corrections.commands import CorrectionRequest, RerateRequest
from billing_core.corrections.events import Correction, correct_usage_event
from billing_core.errors import ValidationFailed
from tasks.corrections import rerate as rerate_task
from web.api.answers import Answer, DecimalString, Timestamp, Uuid, ok
from web.api.ledger import TransactionOut, transaction_out
from web.api.routing import BROKER_ERRORS, billing, documented
from web.auth import ADMIN, authenticate, tenant_for
from web.errors import ApiError
from web.limits import rate_limited
from web.parsing import json_body, parse, path_uuid, time_bound, with_idempotency_header
from web.runtime import unit_of_work

log = logs.get(__name__)


class CorrectionOut(Answer):
    id: Uuid
    usageEventId: Uuid
    action: Literal["void", "amend"]
    reason: str
    costBefore: DecimalString
    costAfter: DecimalString
    difference: DecimalString  # what the tenant's balance moved: positive credited back
    transaction: TransactionOut | None
    createdAt: Timestamp


class CorrectionResponse(Answer):
    success: Literal[True]
    correction: CorrectionOut


def correction_out(c: Correction) -> CorrectionOut:
    return CorrectionOut(id=c.id, usageEventId=c.usage_event_id, action=c.action, reason=c.reason,
                         costBefore=c.cost_before, costAfter=c.cost_after, difference=c.difference,
                         transaction=transaction_out(c.transaction) if c.transaction else None, createdAt=c.created_at)


@billing.post("/usage/<usage_event_id>/corrections")
@documented({200: CorrectionResponse}, 403, 404, 409, json=CorrectionRequest)
@rate_limited(ADMIN)
def post_correction(usage_event_id: str) -> Response:
    """Void or amend one charged usage event: a new entry tied to it, never an edit."""
    principal = authenticate(ADMIN)
    command = parse(CorrectionRequest, with_idempotency_header(json_body()))
    tenant_id = tenant_for(principal, command.tenantId)
    event_id = path_uuid(usage_event_id, "usage event")
    with unit_of_work() as uow:
        correction = correct_usage_event(uow, tenant_id, event_id, command, created_by=principal.subject)
    return ok(CorrectionResponse, correction=correction_out(correction), replayed=correction.replayed)


# --- re-rates ----------------------------------------------------------------------------------------

class RerateTenantOut(Answer):
    tenantId: str
    events: int
    chargedTotal: DecimalString
    reratedTotal: DecimalString
    difference: DecimalString  # charged - re-rated: positive credited back
    transactionId: Uuid | None = None


class RerateOut(Answer):
    id: Uuid | None = None
    status: Literal["dry_run", "running", "completed", "failed"]
    difference: DecimalString | None = None
    tenants: list[RerateTenantOut] | None = None
    from_: Timestamp | None = Field(None, alias="from")
    to: Timestamp | None = None
    error: str | None = None
    createdAt: Timestamp | None = None
    finishedAt: Timestamp | None = None

    model_config = {**Answer.model_config, "populate_by_name": True}


class RerateResponse(Answer):
    success: Literal[True]
    rerate: RerateOut


def rerate_out(found: rerates.RerateRun, *, brief: bool = False) -> RerateOut:
    if brief:
        return RerateOut(id=found.id, status=found.status)
    fields: dict[str, Any] = {
        "status": found.status, "difference": found.difference,
        "tenants": [RerateTenantOut(tenantId=t.tenant_id, events=t.events, chargedTotal=t.charged_total,
                                    reratedTotal=t.rerated_total, difference=t.difference,
                                    **({"transactionId": t.ledger_entry_id} if found.id else {}))
                    for t in found.tenants],
        "from_": found.scope.start, "to": found.scope.end}
    if found.id is not None:  # a run, not a dry run
        fields.update(id=found.id, error=found.error, createdAt=found.created_at, finishedAt=found.finished_at)
    return RerateOut(**fields)


def rerate_scope(command: RerateRequest) -> rerates.RerateScope:
    start, end = time_bound(command.from_, "from", end=False), time_bound(command.to, "to", end=False)
    assert start is not None and end is not None
    return rerates.RerateScope(start, end, command.tenantId, command.category, command.provider, command.model,
                               command.unit)


@billing.post("/rerates")
@documented({200: RerateResponse, 202: RerateResponse}, 403, 409, 503, json=RerateRequest)
@rate_limited(ADMIN)
def post_rerate() -> Response:
    """Re-rate the usage that occurred in [from, to) with the catalog as corrected: a dry run answers
    each tenant's difference and writes nothing; otherwise a worker posts each tenant's difference once
    (follow GET /rerates/<id>). The same idempotencyKey again answers that run (and resumes it)."""
    principal = authenticate(ADMIN)
    command = parse(RerateRequest, with_idempotency_header(json_body()))
    scope = rerate_scope(command)
    if command.dryRun:
        with unit_of_work() as uow:
            found = rerates.dry_run(uow, scope)
        return ok(RerateResponse, rerate=rerate_out(found))
    if command.idempotencyKey is None:
        raise ValidationFailed("idempotencyKey", "is required for a re-rate that posts")
    with unit_of_work() as uow:
        started = rerates.start_run(uow, scope, command.idempotencyKey, requested_by=principal.subject)
    if started.status == rerates.RUNNING:
        try:
            rerate_task.apply_async(args=[str(started.id)], retry=False)
        except BROKER_ERRORS as exc:
            log.warning("broker unavailable, re-rate not started", rerate_id=str(started.id), error=str(exc))
            raise ApiError("unavailable", "the re-rate could not be queued; send it again") from exc
    return ok(RerateResponse, status=202, rerate=rerate_out(started, brief=not started.replayed),
              replayed=started.replayed)


@billing.get("/rerates/<rerate_id>")
@documented({200: RerateResponse}, 403, 404)
@rate_limited(ADMIN)
def get_rerate(rerate_id: str) -> Response:
    authenticate(ADMIN)
    with unit_of_work() as uow:
        found = rerates.get_run(uow, path_uuid(rerate_id, "re-rate"))
    return ok(RerateResponse, rerate=rerate_out(found))
