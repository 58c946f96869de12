"""The credit lifecycle under /api/billing: reservations (holds), budgets, entitlement and binding
quotes. Handlers parse, call billing_core, and answer."""
from __future__ import annotations

from typing import Annotated, Literal

from flask import Response, request
from pydantic import Field

from billing_core import catalog, money
from billing_core.calls import admission
from billing_core.catalog import PricedItem
from billing_core.catalog.items import estimate_cost, line_breakdown
from billing_core.db import UnitOfWork
from billing_core.errors import InsufficientBalance, ValidationFailed
from billing_core.fields import CatalogKey, FeatureKey, TenantId
from billing_core.ledger.model import Hold
from billing_core.lifecycle import budgets, entitlement, holds, quotes
from billing_core.lifecycle.commands import (
    BudgetRequest,
    ExtendReservationRequest,
    QuoteRequest,
    ReleaseReservationRequest,
    ReservationRequest,
)
from billing_core.usage.commands import UsageItem
from web.api.answers import Answer, DecimalString, Query, TenantQuery, Timestamp, Uuid, ok
from web.api.catalog import PackagesLine, PricingModel, TierLine
from web.api.concurrency import ConcurrencyOut, concurrency_out
from web.api.routing import billing, documented
from web.auth import CHARGE, MANAGE, VIEW, authenticate, managed_tenant, tenant_for
from web.limits import rate_limited
from web.parsing import json_body, parse, parse_query, path_uuid, with_idempotency_header
from web.runtime import settings, unit_of_work

ReservationStatus = Literal["active", "settled", "released", "expired"]


class ReservationsQuery(Query):
    status: ReservationStatus | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, Field(max_length=200)] | None = None
    tenantId: TenantId | None = None


class EntitlementQuery(Query):
    featureKey: FeatureKey
    estimatedCost: Annotated[str, Field(max_length=64)] = "0"
    tenantId: TenantId | None = None
    # or price one item as a quote would (added to estimatedCost): all five, or none
    category: CatalogKey | None = None
    provider: CatalogKey | None = None
    model: CatalogKey | None = None
    unit: CatalogKey | None = None
    quantity: Annotated[str, Field(max_length=64)] | None = None


# --- response models and representations ----------------------------------------------------------

class ReservationOut(Answer):
    id: Uuid
    status: ReservationStatus
    amount: DecimalString
    settledAmount: DecimalString | None
    featureKey: str
    externalReferenceId: str | None
    quoteId: Uuid | None
    usageEventId: Uuid | None
    expiresAt: Timestamp
    createdAt: Timestamp
    closedAt: Timestamp | None
    burst: bool = False  # admitted above the plan's base limit: settled at its burst multiplier


class ReservationResponse(Answer):
    success: Literal[True]
    reservation: ReservationOut
    concurrency: ConcurrencyOut  # the tenant's call slots, counting this hold when it was admitted


class ReservationsResponse(Answer):
    success: Literal[True]
    reservations: list[ReservationOut]
    nextCursor: str | None


class BudgetOut(Answer):
    featureKey: str
    limit: DecimalString
    period: Literal["day", "month"]
    action: Literal["reject", "alert"]
    periodStart: Timestamp
    spent: DecimalString
    held: DecimalString
    remaining: DecimalString


class BudgetResponse(Answer):
    success: Literal[True]
    budget: BudgetOut


class BudgetsResponse(Answer):
    success: Literal[True]
    budgets: list[BudgetOut]


class EntitlementOut(Answer):
    allowed: bool
    availableBalance: DecimalString
    reason: Literal["insufficient_balance", "wallet_blocked", "budget_exceeded", "concurrency_limit"] | None


class EntitlementResponse(Answer):
    success: Literal[True]
    entitlement: EntitlementOut
    concurrency: ConcurrencyOut


class QuoteLine(Answer):
    category: str
    provider: str
    model: str
    unit: str
    quantity: DecimalString
    unitPrice: DecimalString | None  # null for package and graduated items: see tiers / packages
    totalCost: DecimalString
    pricingModel: PricingModel = "unit"
    billedQuantity: DecimalString | None = None
    tiers: list[TierLine] | None = None
    packages: PackagesLine | None = None


class Quote(Answer):
    """A binding quote: a charge or reservation naming `quoteId` before `expiresAt` is priced at these unit prices."""
    quoteId: Uuid
    expiresAt: Timestamp
    totalCost: DecimalString
    currency: str
    items: list[QuoteLine]


class QuoteResponse(Answer):
    success: Literal[True]
    quote: Quote


def reservation_out(r: Hold) -> ReservationOut:
    return ReservationOut(id=r.id, status=r.status, amount=r.amount, settledAmount=r.settled_amount,
                          featureKey=r.feature_key, externalReferenceId=r.external_reference_id, quoteId=r.quote_id,
                          usageEventId=r.usage_event_id, expiresAt=r.expires_at, createdAt=r.created_at,
                          closedAt=r.closed_at, burst=r.burst)


def hold_answer(uow: UnitOfWork, tenant_id: str, result: holds.HoldResult) -> Response:
    """A hold's answer: the hold and the tenant's call slots (as admitted, or as they stand now)."""
    slots = result.concurrency or admission.read_concurrency(uow.connection, tenant_id)
    return ok(ReservationResponse, reservation=reservation_out(result.hold), concurrency=concurrency_out(slots),
              replayed=result.replayed)


def budget_out(b: budgets.BudgetStatus) -> BudgetOut:
    return BudgetOut(featureKey=b.budget.feature_key, limit=b.budget.spend_limit, period=b.budget.period,
                     action=b.budget.action, periodStart=b.period_start, spent=b.spent, held=b.held,
                     remaining=b.remaining)


def quote_line(p: PricedItem) -> QuoteLine:
    breakdown = p.breakdown()
    return QuoteLine(category=p.item.category, provider=p.item.provider, model=p.item.model, unit=p.item.unit,
                     quantity=p.item.quantity, unitPrice=p.price.unit_price, totalCost=p.cost,
                     **line_breakdown(p.price.pricing_model, p.billed_quantity,
                                      breakdown["parts"] if breakdown else []))


# --- reservations ---------------------------------------------------------------------------------


def _optional_body() -> dict:

    return json_body() if request.get_data(cache=True).strip() else {}


@billing.post("/reservations")
@documented({200: ReservationResponse}, 402, 403, 404, 409, 410, 413, 422, 429, json=ReservationRequest)
@rate_limited(CHARGE, depleted_limit=True)
def post_reservation() -> Response:
    """Hold credits before work starts (a call slot); availableBalance drops at once. 402 when the hold
    does not fit or the wallet is in debt (reason in_debt); 429 concurrency_limit when every call slot of
    the tenant's plan is taken. The answer carries the call slots (`concurrency`)."""
    principal = authenticate(CHARGE)
    command = parse(ReservationRequest, with_idempotency_header(json_body()))
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        result = holds.reserve(uow, tenant_id, command, created_by=principal.subject)
        return hold_answer(uow, tenant_id, result)


@billing.post("/reservations/<reservation_id>/extend")
@documented({200: ReservationResponse}, 402, 403, 404, 409, 410, json=ExtendReservationRequest)
@rate_limited(CHARGE, depleted_limit=True)
def post_reservation_extend(reservation_id: str) -> Response:
    """Hold more and/or longer (a call that runs long); the expiry is never brought forward."""
    principal = authenticate(CHARGE)
    command = parse(ExtendReservationRequest, with_idempotency_header(json_body()))
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        result = holds.extend(uow, tenant_id, path_uuid(reservation_id, "reservation"), command,
                              created_by=principal.subject)
        return hold_answer(uow, tenant_id, result)


@billing.post("/reservations/<reservation_id>/release")
@documented({200: ReservationResponse}, 403, 404, 409, 410, json=ReleaseReservationRequest)
@rate_limited(CHARGE)
def post_reservation_release(reservation_id: str) -> Response:
    """Give a hold back to the available balance; releasing it again answers it unchanged."""
    principal = authenticate(CHARGE)
    command = parse(ReleaseReservationRequest, with_idempotency_header(_optional_body()))
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        result = holds.release(uow, tenant_id, path_uuid(reservation_id, "reservation"), command,
                               created_by=principal.subject)
        return hold_answer(uow, tenant_id, result)


def _view_or_charge():  # noqa: ANN202
    principal = authenticate()
    if not (principal.has(CHARGE) or principal.has(VIEW)):
        authenticate(VIEW)  # answers 403 naming the capability
    return principal


@billing.get("/reservations/<reservation_id>")
@documented({200: ReservationResponse}, 403, 404, query=TenantQuery)
@rate_limited(VIEW)
def get_reservation(reservation_id: str) -> Response:
    principal = _view_or_charge()
    tenant_id = tenant_for(principal, parse_query(TenantQuery).tenantId)
    with unit_of_work() as uow:
        found = holds.get_hold(uow, tenant_id, path_uuid(reservation_id, "reservation"))
        return hold_answer(uow, tenant_id, holds.HoldResult(found))


@billing.get("/reservations")
@documented({200: ReservationsResponse}, 404, 403, query=ReservationsQuery)
@rate_limited(VIEW)
def get_reservations() -> Response:
    principal = _view_or_charge()
    query = parse_query(ReservationsQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    with unit_of_work() as uow:
        found, next_cursor = holds.list_holds(uow, tenant_id, status=query.status, limit=query.limit,
                                              cursor=query.cursor)
    return ok(ReservationsResponse, reservations=[reservation_out(r) for r in found], nextCursor=next_cursor)


# --- budgets --------------------------------------------------------------------------------------


# <path:…>: a feature key may hold "/" (as a charge's may), sent as is or as %2F
@billing.put("/budgets/<path:feature_key>")
@documented({200: BudgetResponse}, 404, 403, json=BudgetRequest)
@rate_limited(MANAGE)
def put_budget(feature_key: str) -> Response:
    """Limit a feature's spend per day or month; `reject` refuses the charge that would go over it."""
    command = parse(BudgetRequest, json_body())
    _, tenant_id = managed_tenant(command.tenantId)
    feature_key = budgets.valid_feature_key(feature_key)
    with unit_of_work() as uow:
        status = budgets.set_budget(uow, tenant_id, feature_key, spend_limit=command.limit, period=command.period,
                                    action=command.action)
    return ok(BudgetResponse, budget=budget_out(status))


@billing.delete("/budgets/<path:feature_key>")
@documented({200: BudgetsResponse}, 403, 404, query=TenantQuery)
@rate_limited(MANAGE)
def delete_budget(feature_key: str) -> Response:
    _, tenant_id = managed_tenant(parse_query(TenantQuery).tenantId)
    with unit_of_work() as uow:
        remaining = budgets.remove_budget(uow, tenant_id, feature_key)
    return ok(BudgetsResponse, budgets=[budget_out(b) for b in remaining])


@billing.get("/budgets")
@documented({200: BudgetsResponse}, 404, 403, query=TenantQuery)
@rate_limited(VIEW)
def get_budgets() -> Response:
    """Limit, spent, held and remaining per feature in the current period."""
    principal = authenticate(VIEW)
    tenant_id = tenant_for(principal, parse_query(TenantQuery).tenantId)
    with unit_of_work() as uow:
        found = budgets.list_budgets(uow, tenant_id)
    return ok(BudgetsResponse, budgets=[budget_out(b) for b in found])


# --- gating on balance ----------------------------------------------------------------------------


@billing.get("/entitlement")
@documented({200: EntitlementResponse}, 404, 402, 403, 422, query=EntitlementQuery)
@rate_limited(VIEW)  # a read: it must not spend the tenant's charge bucket
def get_entitlement() -> Response:
    """May the feature start work of about `estimatedCost`? A read: nothing is held or written."""
    principal = _view_or_charge()
    query = parse_query(EntitlementQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    try:
        estimated = money.bounded(money.to_decimal(query.estimatedCost), maximum=money.MAX_AMOUNT, allow_zero=True)
    except money.InvalidAmount as exc:
        raise ValidationFailed("estimatedCost", str(exc)) from None
    item = {name: getattr(query, name) for name in ("category", "provider", "model", "unit", "quantity")}
    if any(value is not None for value in item.values()):
        missing = next((name for name, value in item.items() if value is None), None)
        if missing is not None:
            raise ValidationFailed(missing, "an item to estimate needs category, provider, model, unit and quantity")
        usage_item = parse(UsageItem, item)
        with unit_of_work() as uow:
            estimated = money.add(estimated, estimate_cost(uow, tenant_id, [usage_item]))
    with unit_of_work() as uow:  # a read: the unit of work rolls back
        found = entitlement.check(uow.connection, tenant_id, query.featureKey, estimated)
        if found.in_debt:  # frozen for new calls, as a new hold is
            raise InsufficientBalance("the wallet is in debt; new calls are refused until it is repaid",
                                      {"reason": "in_debt", "availableBalance": money.format_decimal(
                                          found.available_balance)})
        slots = admission.read_concurrency(uow.connection, tenant_id)
        full = admission.at_limit(uow.connection, tenant_id, query.featureKey)
    reason = found.reason or ("concurrency_limit" if full else None)
    return ok(EntitlementResponse, entitlement=EntitlementOut(
        allowed=found.allowed and not full, availableBalance=found.available_balance, reason=reason),
        concurrency=concurrency_out(slots))


# --- binding quotes -----------------------------------------------------------------------------


@billing.post("/quote")
@documented({200: QuoteResponse}, 404, 403, 413, 422, json=QuoteRequest)
@rate_limited(VIEW)
def post_quote() -> Response:
    """Price items; the quote is binding for charges and reservations naming its quoteId until expiresAt."""
    principal = authenticate()
    command = parse(QuoteRequest, json_body())
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        quote, priced = quotes.create_quote(
            uow, tenant_id, command.items, command.ttlSeconds or settings().quote_ttl_seconds)
    return ok(QuoteResponse, quote=Quote(quoteId=quote.id, expiresAt=quote.expires_at,
                                         totalCost=money.total(p.cost for p in priced), currency=catalog.CURRENCY,
                                         items=[quote_line(p) for p in priced]))
