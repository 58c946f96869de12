"""The credit lifecycle under /api/billing: reservations, budgets, refunds and adjustments, entitlement,
wallet settings and catalog administration. Handlers parse, call billing_core, and answer."""
from __future__ import annotations

from flask import Response, request

from billing_core import catalog, money
from billing_core.catalog.items import estimate_cost
from billing_core.errors import ValidationFailed
from billing_core.lifecycle import budgets, entitlement, holds, quotes
from billing_core.lifecycle.commands import (
    BudgetRequest,
    ExtendReservationRequest,
    QuoteRequest,
    ReleaseReservationRequest,
    ReservationRequest,
)
from billing_core.usage.commands import UsageItem
from web import representations as show
from web import schemas
from web.api.routing import billing, documented, ok
from web.auth import CHARGE, MANAGE, VIEW, authenticate, managed_tenant, tenant_for
from web.limits import rate_limited
from web.parsing import json_body, parse, parse_query, path_uuid, with_idempotency_header
from web.runtime import settings, unit_of_work

# --- reservations ---------------------------------------------------------------------------------


def _optional_body() -> dict:

    return json_body() if request.get_data(cache=True).strip() else {}


@billing.post("/reservations")
@documented({200: schemas.ReservationResponse}, 402, 403, 404, 409, 410, 413, 422, json=ReservationRequest)
@rate_limited(CHARGE, depleted_limit=True)
def post_reservation() -> Response:
    """Hold credits before work starts; availableBalance drops at once. 402 when the hold does not fit."""
    principal = authenticate(CHARGE)
    command = parse(ReservationRequest, with_idempotency_header(json_body()))
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        result = holds.reserve(uow, tenant_id, command, created_by=principal.subject)
    return ok(reservation=show.reservation(result.hold), replayed=result.replayed)


@billing.post("/reservations/<reservation_id>/extend")
@documented({200: schemas.ReservationResponse}, 402, 403, 404, 409, 410, json=ExtendReservationRequest)
@rate_limited(CHARGE, depleted_limit=True)
def post_reservation_extend(reservation_id: str) -> Response:
    """Hold more and/or longer (a call that runs long); the expiry is never brought forward."""
    principal = authenticate(CHARGE)
    command = parse(ExtendReservationRequest, with_idempotency_header(json_body()))
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        result = holds.extend(uow, tenant_id, path_uuid(reservation_id, "reservation"), command,
                                     created_by=principal.subject)
    return ok(reservation=show.reservation(result.hold), replayed=result.replayed)


@billing.post("/reservations/<reservation_id>/release")
@documented({200: schemas.ReservationResponse}, 403, 404, 409, 410, json=ReleaseReservationRequest)
@rate_limited(CHARGE)
def post_reservation_release(reservation_id: str) -> Response:
    """Give a hold back to the available balance; releasing it again answers it unchanged."""
    principal = authenticate(CHARGE)
    command = parse(ReleaseReservationRequest, with_idempotency_header(_optional_body()))
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        result = holds.release(uow, tenant_id, path_uuid(reservation_id, "reservation"), command,
                                      created_by=principal.subject)
    return ok(reservation=show.reservation(result.hold), replayed=result.replayed)


def _view_or_charge():  # noqa: ANN202
    principal = authenticate()
    if not (principal.has(CHARGE) or principal.has(VIEW)):
        authenticate(VIEW)  # answers 403 naming the capability
    return principal


@billing.get("/reservations/<reservation_id>")
@documented({200: schemas.ReservationResponse}, 403, 404, query=schemas.TenantQuery)
@rate_limited(VIEW)
def get_reservation(reservation_id: str) -> Response:
    principal = _view_or_charge()
    tenant_id = tenant_for(principal, parse_query(schemas.TenantQuery).tenantId)
    with unit_of_work() as uow:
        found = holds.get_hold(uow, tenant_id, path_uuid(reservation_id, "reservation"))
    return ok(reservation=show.reservation(found))


@billing.get("/reservations")
@documented({200: schemas.ReservationsResponse}, 403, query=schemas.ReservationsQuery)
@rate_limited(VIEW)
def get_reservations() -> Response:
    principal = _view_or_charge()
    query = parse_query(schemas.ReservationsQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    with unit_of_work() as uow:
        found, next_cursor = holds.list_holds(uow, tenant_id, status=query.status, limit=query.limit,
                                              cursor=query.cursor)
    return ok(reservations=[show.reservation(r) for r in found], nextCursor=next_cursor)


# --- budgets --------------------------------------------------------------------------------------


# <path:…>: a feature key may hold "/" (as a charge's may), sent as is or as %2F
@billing.put("/budgets/<path:feature_key>")
@documented({200: schemas.BudgetResponse}, 403, json=BudgetRequest)
@rate_limited(MANAGE)
def put_budget(feature_key: str) -> Response:
    """Limit a feature's spend per day or month; `reject` refuses the charge that would go over it."""
    command = parse(BudgetRequest, json_body())
    _, tenant_id = managed_tenant(command.tenantId)
    feature_key = budgets.valid_feature_key(feature_key)
    with unit_of_work() as uow:
        status = budgets.set_budget(uow, tenant_id, feature_key, spend_limit=command.limit, period=command.period,
                                    action=command.action)
    return ok(budget=show.budget(status))


@billing.delete("/budgets/<path:feature_key>")
@documented({200: schemas.BudgetsResponse}, 403, 404, query=schemas.TenantQuery)
@rate_limited(MANAGE)
def delete_budget(feature_key: str) -> Response:
    _, tenant_id = managed_tenant(parse_query(schemas.TenantQuery).tenantId)
    with unit_of_work() as uow:
        remaining = budgets.remove_budget(uow, tenant_id, feature_key)
    return ok(budgets=[show.budget(b) for b in remaining])


@billing.get("/budgets")
@documented({200: schemas.BudgetsResponse}, 403, query=schemas.TenantQuery)
@rate_limited(VIEW)
def get_budgets() -> Response:
    """Limit, spent, held and remaining per feature in the current period."""
    principal = authenticate(VIEW)
    tenant_id = tenant_for(principal, parse_query(schemas.TenantQuery).tenantId)
    with unit_of_work() as uow:
        found = budgets.list_budgets(uow, tenant_id)
    return ok(budgets=[show.budget(b) for b in found])


# --- refunds and adjustments ----------------------------------------------------------------------


# --- gating on balance ----------------------------------------------------------------------------


@billing.get("/entitlement")
@documented({200: schemas.EntitlementResponse}, 403, 422, query=schemas.EntitlementQuery)
@rate_limited(VIEW)  # a read: it must not spend the tenant's charge bucket
def get_entitlement() -> Response:
    """May the feature start work of about `estimatedCost`? A read: nothing is held or written."""
    principal = _view_or_charge()
    query = parse_query(schemas.EntitlementQuery)
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
    return ok(entitlement={"allowed": found.allowed, "availableBalance": show.amount(found.available_balance),
                           "reason": found.reason})


# --- administration -------------------------------------------------------------------------------


@billing.post("/quote")
@documented({200: schemas.QuoteResponse}, 403, 413, 422, json=QuoteRequest)
@rate_limited(VIEW)
def post_quote() -> Response:
    """Price items; the quote is binding for charges and reservations naming its quoteId until expiresAt."""
    principal = authenticate()
    command = parse(QuoteRequest, json_body())
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        quote, priced = quotes.create_quote(
            uow, tenant_id, command.items, command.ttlSeconds or settings().quote_ttl_seconds)
    return ok(quote={"quoteId": str(quote.id), "expiresAt": show.timestamp(quote.expires_at),
                     "totalCost": show.amount(money.total(p.cost for p in priced)), "currency": catalog.CURRENCY,
                     "items": [show.quote_line(p) for p in priced]})
