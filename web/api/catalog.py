"""The catalog under /api/billing: prices (GET and PUT /pricing), tenant multipliers and provider costs
(`billing.admin`). Handlers parse, call billing_core.catalog, and answer."""
from __future__ import annotations

from typing import Any, Literal

from flask import Response

from billing_core import catalog
from billing_core.catalog import Adjustment, Price, ProviderCost, adjustments, costs
from billing_core.catalog.commands import CostRequest, PriceAdjustmentRequest, PriceRequest
from billing_core.catalog.models import terms_from_request, tiers_to_json
from billing_core.fields import CatalogKey, TenantId
from web.api.answers import Answer, DecimalString, Query, TimeBound, Timestamp, Uuid, ok
from web.api.routing import billing, documented
from web.auth import ADMIN, VIEW, authenticate, tenant_for
from web.limits import rate_limited
from web.parsing import json_body, parse, parse_query, time_bound
from web.runtime import unit_of_work


class PricingQuery(Query):
    category: CatalogKey | None = None
    provider: CatalogKey | None = None
    model: CatalogKey | None = None
    unit: CatalogKey | None = None
    tenantId: TenantId | None = None


class PricingAtQuery(PricingQuery):
    at: TimeBound | None = None


class AdjustmentsQuery(Query):
    tenantId: TenantId | None = None


class CostsQuery(Query):
    category: CatalogKey | None = None
    provider: CatalogKey | None = None
    model: CatalogKey | None = None
    unit: CatalogKey | None = None


# --- response models and representations ----------------------------------------------------------

PricingModel = Literal["unit", "package", "graduated"]


class TierOut(Answer):
    upTo: DecimalString | None
    unitPrice: DecimalString


class TierLine(Answer):
    quantity: DecimalString
    unitPrice: DecimalString
    amount: DecimalString


class PackagesLine(Answer):
    count: DecimalString
    packageSize: DecimalString | None
    packagePrice: DecimalString | None
    amount: DecimalString


class PriceOut(Answer):
    category: str
    provider: str
    model: str
    unit: str
    unitPrice: DecimalString | None  # the unit model's; null for package and graduated
    currency: str
    description: str | None
    scope: Literal["global", "tenant"]
    effectiveFrom: Timestamp
    effectiveTo: Timestamp | None
    # pricing models (see "Pricing models" in the README); each term only where the model has it
    pricingModel: PricingModel = "unit"
    packageSize: DecimalString | None = None
    packagePrice: DecimalString | None = None
    minimumQuantity: DecimalString | None = None
    multiplier: DecimalString | None = None  # the tenant's multiplier, already applied to the prices
    tiers: list[TierOut] | None = None


class PricingResponse(Answer):
    """`price` when all four of category, provider, model and unit are given; else `prices`."""
    success: Literal[True]
    price: PriceOut | None = None
    prices: list[PriceOut] | None = None


class PriceResponse(Answer):
    success: Literal[True]
    price: PriceOut


class AdjustmentOut(Answer):
    id: Uuid
    tenantId: str
    multiplier: DecimalString
    category: str | None
    provider: str | None
    model: str | None
    unit: str | None
    effectiveFrom: Timestamp
    effectiveTo: Timestamp | None


class AdjustmentResponse(Answer):
    success: Literal[True]
    adjustment: AdjustmentOut


class AdjustmentsResponse(Answer):
    success: Literal[True]
    adjustments: list[AdjustmentOut]


class CostOut(Answer):
    id: Uuid
    category: str
    provider: str
    model: str
    unit: str
    unitCost: DecimalString
    currency: str
    effectiveFrom: Timestamp
    effectiveTo: Timestamp | None


class CostResponse(Answer):
    success: Literal[True]
    cost: CostOut


class CostsResponse(Answer):
    success: Literal[True]
    costs: list[CostOut]


def price_out(p: Price) -> PriceOut:
    fields: dict[str, Any] = {
        "category": p.category, "provider": p.provider, "model": p.model, "unit": p.unit,
        "unitPrice": p.unit_price, "currency": p.currency, "description": p.description,
        "scope": "tenant" if p.tenant_id else "global", "effectiveFrom": p.effective_from,
        "effectiveTo": p.effective_to, "pricingModel": p.pricing_model,
    }
    terms = p.terms
    for name, value in (("packageSize", terms.package_size), ("packagePrice", terms.package_price),
                        ("minimumQuantity", terms.minimum_quantity), ("multiplier", p.multiplier)):
        if value is not None:
            fields[name] = value
    if terms.tiers:
        fields["tiers"] = tiers_to_json(terms.tiers)
    return PriceOut(**fields)


def adjustment_out(a: Adjustment) -> AdjustmentOut:
    return AdjustmentOut(id=a.id, tenantId=a.tenant_id, multiplier=a.multiplier, category=a.category,
                         provider=a.provider, model=a.model, unit=a.unit, effectiveFrom=a.effective_from,
                         effectiveTo=a.effective_to)


def cost_out(c: ProviderCost) -> CostOut:
    return CostOut(id=c.id, category=c.category, provider=c.provider, model=c.model, unit=c.unit,
                   unitCost=c.unit_cost, currency=c.currency, effectiveFrom=c.effective_from,
                   effectiveTo=c.effective_to)


# --- routes ---------------------------------------------------------------------------------------


@billing.put("/pricing/adjustments")
@documented({200: AdjustmentResponse}, 403, json=PriceAdjustmentRequest)
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
    return ok(AdjustmentResponse, adjustment=adjustment_out(found))


@billing.get("/pricing/adjustments")
@documented({200: AdjustmentsResponse}, 404, 403, query=AdjustmentsQuery)
@rate_limited(ADMIN)
def get_price_adjustments() -> Response:
    principal = authenticate(ADMIN)
    tenant_id = tenant_for(principal, parse_query(AdjustmentsQuery).tenantId)
    with unit_of_work() as uow:
        found = adjustments.list_adjustments(uow, tenant_id)
    return ok(AdjustmentsResponse, adjustments=[adjustment_out(a) for a in found])


@billing.put("/costs")
@documented({200: CostResponse}, 403, json=CostRequest)
@rate_limited(ADMIN)
def put_cost() -> Response:
    """What the platform pays its provider per unit of an item, from effectiveFrom (default now)."""
    authenticate(ADMIN)
    command = parse(CostRequest, json_body())
    with unit_of_work() as uow:
        found = costs.put_cost(uow, (command.category, command.provider, command.model, command.unit),
                               command.unitCost, command.effectiveFrom)
    return ok(CostResponse, cost=cost_out(found))


@billing.get("/costs")
@documented({200: CostsResponse}, 403, query=CostsQuery)
@rate_limited(ADMIN)
def get_costs() -> Response:
    authenticate(ADMIN)
    query = parse_query(CostsQuery)
    with unit_of_work() as uow:
        found = costs.list_costs(uow, category=query.category, provider=query.provider, model=query.model,
                                 unit=query.unit)
    return ok(CostsResponse, costs=[cost_out(c) for c in found])


@billing.get("/pricing")
@documented({200: PricingResponse}, 404, query=PricingAtQuery)
@rate_limited(VIEW)
def get_pricing() -> Response:
    """The prices in force now, or `at` a given time."""
    principal = authenticate()
    query = parse_query(PricingAtQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    key = (query.category, query.provider, query.model, query.unit)
    with unit_of_work() as uow:
        now = time_bound(query.at, "at", end=False) or uow.now()
        if all(key):
            return ok(PricingResponse, price=price_out(catalog.find_price(uow, tenant_id, key, now)))  # type: ignore[arg-type]
        found = catalog.list_prices(uow, tenant_id, now, category=query.category, provider=query.provider,
                                    model=query.model, unit=query.unit)
    return ok(PricingResponse, prices=[price_out(p) for p in found])


@billing.put("/pricing")
@documented({200: PriceResponse}, 403, json=PriceRequest)
@rate_limited(ADMIN)
def put_pricing() -> Response:
    """A new price from effectiveFrom (default now): a tenant's override with tenantId, else global.
    The price in force until then is closed, never edited."""
    principal = authenticate(ADMIN)
    command = parse(PriceRequest, json_body())
    terms = terms_from_request(
        command.pricingModel, unit_price=command.unitPrice, package_size=command.packageSize,
        package_price=command.packagePrice, minimum_quantity=command.minimumQuantity,
        tiers=None if command.tiers is None else [t.model_dump() for t in command.tiers])
    with unit_of_work() as uow:
        price = catalog.put_price(uow, tenant_id=command.tenantId,
                                  key=(command.category, command.provider, command.model, command.unit),
                                  terms=terms, effective_from=command.effectiveFrom,
                                  description=command.description, correction_reason=command.correctionReason,
                                  created_by=principal.subject)
    return ok(PriceResponse, price=price_out(price))
