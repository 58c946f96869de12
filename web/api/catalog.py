"""Pricing administration and margins under /api/billing: tenant multipliers, provider costs and
the platform's margins (all `billing.admin`). Handlers parse, call billing_core.catalog, and answer."""
from __future__ import annotations

from flask import Response

from billing_core import catalog
from billing_core.catalog import adjustments, costs
from billing_core.catalog.commands import CostRequest, PriceAdjustmentRequest, PriceRequest
from billing_core.catalog.models import terms_from_request
from web import representations as show
from web import schemas
from web.api.routing import billing, documented, ok
from web.auth import ADMIN, VIEW, authenticate, tenant_for
from web.limits import rate_limited
from web.parsing import json_body, parse, parse_query, time_bound
from web.runtime import unit_of_work


@billing.put("/pricing/adjustments")
@documented({200: schemas.AdjustmentResponse}, 403, json=PriceAdjustmentRequest)
@rate_limited(ADMIN)
def put_price_adjustment() -> Response:
    """A tenant's multiplier of the global prices from effectiveFrom (default now): 0.9 is 10% off,
    1.25 a markup; the most specific scope applies; the tenant's own price rows are never scaled."""
    authenticate(ADMIN)
    command = parse(PriceAdjustmentRequest, json_body())
    with unit_of_work() as uow:
        found = adjustments.put_adjustment(
            uow, command.tenantId, multiplier=command.multiplier,
            scope=(command.category, command.provider, command.model, command.unit),
            effective_from=command.effectiveFrom)
    return ok(adjustment=show.adjustment(found))


@billing.get("/pricing/adjustments")
@documented({200: schemas.AdjustmentsResponse}, 403, query=schemas.AdjustmentsQuery)
@rate_limited(ADMIN)
def get_price_adjustments() -> Response:
    principal = authenticate(ADMIN)
    tenant_id = tenant_for(principal, parse_query(schemas.AdjustmentsQuery).tenantId)
    with unit_of_work() as uow:
        found = adjustments.list_adjustments(uow, tenant_id)
    return ok(adjustments=[show.adjustment(a) for a in found])


@billing.put("/costs")
@documented({200: schemas.CostResponse}, 403, json=CostRequest)
@rate_limited(ADMIN)
def put_cost() -> Response:
    """What the platform pays its provider per unit of an item, from effectiveFrom (default now)."""
    authenticate(ADMIN)
    command = parse(CostRequest, json_body())
    with unit_of_work() as uow:
        found = costs.put_cost(uow, (command.category, command.provider, command.model, command.unit),
                               command.unitCost, command.effectiveFrom)
    return ok(cost=show.provider_cost(found))


@billing.get("/costs")
@documented({200: schemas.CostsResponse}, 403, query=schemas.CostsQuery)
@rate_limited(ADMIN)
def get_costs() -> Response:
    authenticate(ADMIN)
    query = parse_query(schemas.CostsQuery)
    with unit_of_work() as uow:
        found = costs.list_costs(uow, category=query.category, provider=query.provider, model=query.model,
                                 unit=query.unit)
    return ok(costs=[show.provider_cost(c) for c in found])


@billing.get("/pricing")
@documented({200: schemas.PricingResponse}, 404, query=schemas.PricingAtQuery)
@rate_limited(VIEW)
def get_pricing() -> Response:
    """The prices in force now, or `at` a given time."""
    principal = authenticate()
    query = parse_query(schemas.PricingAtQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    key = (query.category, query.provider, query.model, query.unit)
    with unit_of_work() as uow:
        now = time_bound(query.at, "at", end=False) or uow.now()
        if all(key):
            return ok(price=show.price(catalog.find_price(uow, tenant_id, key, now)))  # type: ignore[arg-type]
        found = catalog.list_prices(uow, tenant_id, now, category=query.category, provider=query.provider,
                                    model=query.model, unit=query.unit)
    return ok(prices=[show.price(p) for p in found])


@billing.put("/pricing")
@documented({200: schemas.PriceResponse}, 403, json=PriceRequest)
@rate_limited(ADMIN)
def put_pricing() -> Response:
    """A new price from effectiveFrom (default now): a tenant's override with tenantId, else global.
    The price in force until then is closed, never edited."""
    authenticate(ADMIN)
    command = parse(PriceRequest, json_body())
    terms = terms_from_request(
        command.pricingModel, unit_price=command.unitPrice, package_size=command.packageSize,
        package_price=command.packagePrice, minimum_quantity=command.minimumQuantity,
        tiers=None if command.tiers is None else [t.model_dump() for t in command.tiers])
    with unit_of_work() as uow:
        price = catalog.put_price(uow, tenant_id=command.tenantId,
                                  key=(command.category, command.provider, command.model, command.unit),
                                  terms=terms, effective_from=command.effectiveFrom,
                                  description=command.description)
    return ok(price=show.price(price))
