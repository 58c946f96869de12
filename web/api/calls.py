"""Calls under /api/billing: the statement of one call (GET /calls/<externalReferenceId>). Concurrency
limits and settlement are decided where holds and charges are (billing_core/calls, lifecycle, usage);
the call slots' representation is web/api/concurrency.py."""
from __future__ import annotations

from typing import Literal

from flask import Response
from pydantic import Field

from billing_core.calls.statement import CallItem, CallStatement, Component, call_statement
from billing_core.errors import ValidationFailed
from web.api.answers import Answer, DecimalString, TenantQuery, Timestamp, Uuid, ok
from web.api.ledger import TransactionOut, transaction_out
from web.api.lifecycle import ReservationStatus
from web.api.routing import billing, documented
from web.auth import ADMIN, VIEW, authenticate, tenant_for
from web.limits import rate_limited
from web.parsing import parse_query
from web.runtime import unit_of_work

MAX_REFERENCE = 255


class CallHoldOut(Answer):
    id: Uuid
    status: ReservationStatus
    amount: DecimalString  # with its extensions
    settledAmount: DecimalString | None
    burst: bool
    featureKey: str
    expiresAt: Timestamp
    createdAt: Timestamp
    closedAt: Timestamp | None


class CallEventOut(Answer):
    id: Uuid
    status: Literal["pending", "charged", "rejected"]
    totalCost: DecimalString | None
    featureKey: str
    reservationId: Uuid | None
    createdAt: Timestamp


class CallComponentOut(Answer):
    """One category's items of the call's charged events; providerCost for billing.admin only."""
    category: str
    quantity: DecimalString
    billedQuantity: DecimalString
    cost: DecimalString
    burst: bool
    providerCost: DecimalString | None = None


class CallItemOut(Answer):
    usageEventId: Uuid
    category: str
    provider: str
    model: str
    unit: str
    quantity: DecimalString
    billedQuantity: DecimalString
    unitPrice: DecimalString | None
    cost: DecimalString
    burst: bool
    burstMultiplier: DecimalString | None
    providerCost: DecimalString | None = None


class CallOut(Answer):
    """`ledgerTotal` is the sum of the call's ledger entries (`entries`; a debit is negative), so
    totalCost = -ledgerTotal when nothing was refunded. providerCost and margin: billing.admin only."""
    externalReferenceId: str
    holds: list[CallHoldOut]
    events: list[CallEventOut]
    components: list[CallComponentOut]
    items: list[CallItemOut]
    entries: list[TransactionOut]
    totalCost: DecimalString
    ledgerTotal: DecimalString
    corrections: DecimalString = Field("0", description="what voids, amends and re-rates of the call's charges "
                                                        "credited back (positive) or debited")
    netCost: DecimalString | None = Field(None, description="totalCost - corrections: the charges as corrected")
    providerCost: DecimalString | None = None
    margin: DecimalString | None = None


class CallResponse(Answer):
    success: Literal[True]
    call: CallOut


def _component(c: Component, operator: bool) -> CallComponentOut:
    extra = {"providerCost": c.provider_cost} if operator else {}
    return CallComponentOut(category=c.category, quantity=c.quantity, billedQuantity=c.billed_quantity, cost=c.cost,
                            burst=c.burst, **extra)


def _item(i: CallItem, operator: bool) -> CallItemOut:
    extra = {"providerCost": i.provider_cost} if operator else {}
    return CallItemOut(usageEventId=i.usage_event_id, category=i.category, provider=i.provider, model=i.model,
                       unit=i.unit, quantity=i.quantity, billedQuantity=i.billed_quantity, unitPrice=i.unit_price,
                       cost=i.cost, burst=i.burst_multiplier is not None, burstMultiplier=i.burst_multiplier, **extra)


def call_out(s: CallStatement, *, operator: bool) -> CallOut:
    """The statement as the API shows it; `operator` (billing.admin) adds provider cost and margin."""
    extra = {"providerCost": s.provider_cost, "margin": s.margin} if operator else {}
    return CallOut(
        externalReferenceId=s.external_reference_id,
        holds=[CallHoldOut(id=h.id, status=h.status, amount=h.amount, settledAmount=h.settled_amount, burst=h.burst,
                           featureKey=h.feature_key, expiresAt=h.expires_at, createdAt=h.created_at,
                           closedAt=h.closed_at) for h in s.holds],
        events=[CallEventOut(id=e.id, status=e.status, totalCost=e.total_cost, featureKey=e.feature_key,
                             reservationId=e.reservation_id, createdAt=e.created_at) for e in s.events],
        components=[_component(c, operator) for c in s.components],
        items=[_item(i, operator) for i in s.items],
        entries=[transaction_out(e) for e in s.entries],
        totalCost=s.total_cost, ledgerTotal=s.ledger_total, corrections=s.corrections, netCost=s.net_cost, **extra)


def reference(value: str) -> str:
    if not value or len(value) > MAX_REFERENCE:
        raise ValidationFailed("externalReferenceId", f"must be 1-{MAX_REFERENCE} characters")
    return value


# <path:…>: a call's reference may hold "/" (as a charge's externalReferenceId may)
@billing.get("/calls/<path:external_reference_id>")
@documented({200: CallResponse}, 403, 404, query=TenantQuery)
@rate_limited(VIEW)
def get_call(external_reference_id: str) -> Response:
    """One call's statement: its holds and extensions, its charges, its items by component and its
    ledger entries, with totals equal to those entries. Another tenant's reference is 404."""
    principal = authenticate(VIEW)
    tenant_id = tenant_for(principal, parse_query(TenantQuery).tenantId)
    with unit_of_work() as uow:  # the primary: a statement right after a settlement shows it
        found = call_statement(uow.connection, tenant_id, reference(external_reference_id))
    return ok(CallResponse, call=call_out(found, operator=ADMIN in principal.capabilities))
