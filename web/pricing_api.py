"""Pricing administration and margins under /api/billing: tenant multipliers, provider costs and
the platform's margins (all `billing.admin`). Handlers parse, call billing_core.catalog, and answer."""
from __future__ import annotations

from typing import Any

from flask import Response, current_app
from sqlalchemy.engine import Connection

from billing_core import money
from billing_core.catalog import adjustments, costs
from billing_core.catalog.commands import CostRequest, PriceAdjustmentRequest
from billing_core.catalog.positions import month_of
from billing_core.db import read_engine
from billing_core.invoicing import invoices
from billing_core.invoicing import margins as margin_report
from web import representations as show
from web import schemas
from web.api import billing, documented, ok, unit_of_work
from web.auth import ADMIN, authenticate, tenant_for
from web.errors import ApiError
from web.limits import rate_limited
from web.parsing import json_body, parse, parse_query, time_bound


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


@billing.get("/margins")
@documented({200: schemas.MarginsResponse}, 403, query=schemas.MarginsQuery)
@rate_limited(ADMIN)
def get_margins() -> Response:
    """Revenue, provider cost and margin of charged usage less refunds, by event time in [from, to)
    (default: this UTC month so far); every tenant, or the one named by tenantId."""
    authenticate(ADMIN)
    query = parse_query(schemas.MarginsQuery)
    # a report over many events: the replica's (READ_DATABASE_URL) when there is one
    with read_engine(current_app.config["LAD_SETTINGS"]).connect() as connection:
        body = margins_report(connection, query)
        connection.rollback()
    return ok(margins=body)


def margins_report(connection: Connection, query: schemas.MarginsQuery) -> dict[str, Any]:
    """The margins as GET /margins answers them; the console's margins page shows the same."""
    now = connection.exec_driver_sql("SELECT now()").scalar_one()
    start = time_bound(query.from_, "from", end=False) or month_of(now)
    end = time_bound(query.to, "to", end=True) or now
    found = margin_report.margins(connection, start=start, end=end, group_by=query.groupBy,
                                  tenant_id=query.tenantId)
    text = money.format_decimal

    def pct(value):  # noqa: ANN001, ANN202
        return None if value is None else text(value)
    return {
        "revenue": text(found.revenue), "cost": text(found.cost),
        "margin": text(money.subtract(found.revenue, found.cost)),
        "marginPercent": pct(margin_report.margin_percent(found.revenue, found.cost)),
        "groups": [{"key": g.key, "revenue": text(g.revenue), "cost": text(g.cost), "margin": text(g.margin),
                    "marginPercent": pct(g.margin_percent), "events": g.events,
                    "uncostedRevenue": text(g.uncosted_revenue), "uncostedItems": g.uncosted_items}
                   for g in found.groups],
        "uncosted": {"revenue": text(found.uncosted_revenue), "items": found.uncosted_items},
        "groupBy": query.groupBy, "from": show.timestamp(start), "to": show.timestamp(end)}


@billing.get("/invoices/margins")
@documented({200: schemas.InvoiceMarginsResponse}, 403, 409, query=schemas.InvoiceMarginsQuery)
@rate_limited(ADMIN)
def get_invoice_margins() -> Response:
    """Operators' view of a month's invoice data (default: the current month): each usage line, as the
    invoice and its preview group them, with its provider cost and margin. The tenant's invoice never
    shows costs. Uncosted parts are counted apart, never as a zero cost."""
    principal = authenticate(ADMIN)
    query = parse_query(schemas.InvoiceMarginsQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    with unit_of_work() as uow:
        period = invoices.Period.parse(query.period) if query.period else invoices.Period.containing(uow.now())
        try:
            draft = invoices.preview(uow, tenant_id, period)
        except invoices.PeriodNotStarted as exc:
            raise ApiError(exc.code, exc.message, exc.details, status=409) from None
        found = {m.key: m for m in margin_report.invoice_line_margins(
            uow.connection, tenant_id, draft.period_start, draft.period_end)}
        uow.rollback()
    text = money.format_decimal
    lines = []
    for line in draft.usage_lines:
        key = (line.feature_key, line.category, line.provider, line.model, line.unit,
               None if line.unit_price is None else money.normalize(line.unit_price), line.prior_period)
        m = found.get(key)
        percent = margin_report.margin_percent(m.revenue, m.cost) if m else None
        lines.append({"lineNumber": line.line_no, "featureKey": line.feature_key, "category": line.category,
                      "provider": line.provider, "model": line.model, "unit": line.unit,
                      "unitPrice": show.amount(line.unit_price), "quantity": show.amount(line.quantity),
                      "exactAmount": show.amount(line.exact_amount), "priorPeriod": line.prior_period,
                      "revenue": text(m.revenue) if m else "0", "cost": text(m.cost) if m else "0",
                      "margin": text(m.margin) if m else "0",
                      "marginPercent": None if percent is None else text(percent),
                      "uncostedRevenue": text(m.uncosted_revenue) if m else text(line.exact_amount),
                      "uncostedItems": m.uncosted_items if m else line.item_count})
    return ok(invoiceMargins={"tenantId": tenant_id, "period": period.label, "lines": lines})
