"""The operators' console: agencies and their trees. The operator sees, per sub-account, what the
sub-account was charged (resale), what LAD charged the agency for it (the agency price, LAD's revenue)
against the provider's cost, and both margins — the agency's (resale − agency price) and LAD's
(agency price − provider cost, as GET /margins counts it)."""
from __future__ import annotations

from typing import Any

from flask import render_template, request

from billing_core import money
from billing_core.agencies import tree, views
from billing_core.errors import NotFound
from billing_core.invoicing import margins as margin_report
from billing_core.invoicing.invoices import Period
from web.api.answers import amount, timestamp
from web.auth import TENANT_ID
from web.pages.console import console
from web.runtime import unit_of_work


@console.context_processor
def _tree_of() -> dict[str, Any]:
    """One tenant's page says which tree it is in: the agency's own id, or its sub-account's agency."""
    tenant_id = (request.view_args or {}).get("tenant_id")
    if request.endpoint != "console.tenant" or not isinstance(tenant_id, str):
        return {"tree_of": None}
    with unit_of_work() as uow:
        if tree.is_agency(uow, tenant_id):
            return {"tree_of": tenant_id}
        sub = tree.find_sub_account(uow, tenant_id)
    return {"tree_of": sub.agency_id if sub else None}


def _lad(margins: margin_report.Margins) -> dict[str, Any]:
    """LAD's side as GET /margins has it: revenue of the costed items, their provider cost, margin; the
    revenue of items with no provider cost apart."""
    return {"ladRevenue": amount(money.add(margins.revenue, margins.uncosted_revenue)),
            "providerCost": amount(margins.cost), "ladMargin": amount(money.subtract(margins.revenue, margins.cost)),
            "uncosted": amount(margins.uncosted_revenue)}


@console.get("/agencies")
def agencies() -> str:
    with unit_of_work() as uow:
        month = Period.containing(uow.now())
        found = []
        for agency_id, since in views.list_agencies(uow):
            lines = views.tree_lines(uow, agency_id, month.start, month.end)
            revenue = money.total(s.revenue for s in lines)
            cost = money.total(s.cost for s in lines)
            found.append({"tenantId": agency_id, "since": timestamp(since), "subAccounts": len(lines),
                          "resale": amount(revenue), "agencyPrice": amount(cost),
                          "agencyMargin": amount(money.subtract(revenue, cost))})
    return render_template("console/agencies.html", month=month.label, agencies=found)


@console.get("/agencies/<agency_id>")
def agency(agency_id: str) -> str:
    with unit_of_work() as uow:
        if not TENANT_ID.fullmatch(agency_id) or not tree.is_agency(uow, agency_id):
            raise NotFound(f"agency {agency_id} not found")
        month = Period.containing(uow.now())
        lines = views.tree_lines(uow, agency_id, month.start, month.end)
        own = margin_report.margins(uow.connection, start=month.start, end=month.end, group_by="tenant",
                                    tenant_id=agency_id)
        rows = []
        for s in lines:
            lad = margin_report.margins(uow.connection, start=month.start, end=month.end, group_by="tenant",
                                        tenant_id=s.tenant_id)
            rows.append({"tenantId": s.tenant_id, "funding": s.funding, "spendCap": amount(s.spend_cap),
                         "status": s.status, "balance": amount(s.balance), "events": s.events,
                         "resale": amount(s.revenue), "agencyPrice": amount(s.cost), "agencyMargin": amount(s.margin),
                         **_lad(lad)})
    return render_template("console/agency.html", agency_id=agency_id, month=month.label, rows=rows, own=_lad(own))
