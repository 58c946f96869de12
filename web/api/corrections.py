"""Corrections of one usage event (issue 20): POST /usage/<id>/corrections (billing.admin)."""
from __future__ import annotations

from typing import Literal

from flask import Response

from billing_core.corrections.commands import CorrectionRequest
from billing_core.corrections.events import Correction, correct_usage_event
from web.api.answers import Answer, DecimalString, Timestamp, Uuid, ok
from web.api.ledger import TransactionOut, transaction_out
from web.api.routing import billing, documented
from web.auth import ADMIN, authenticate, tenant_for
from web.limits import rate_limited
from web.parsing import json_body, parse, path_uuid, with_idempotency_header
from web.runtime import unit_of_work


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
