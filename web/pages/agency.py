"""The agency's own pages in its portal (/portal/sub-accounts…): its sub-accounts (balance, the month's
spend, margin, status), any one of them opened (its wallet, charges, invoices, one call — only the
agency's own sub-accounts; any other name is 404), the top-up of a prepaid one, and the resale price
book with its preview. The same use cases as the API (billing_core.agencies), forms with CSRF and
idempotency keys minted with the form; every change is recorded with the session."""
from __future__ import annotations

import re
import uuid
from typing import Any

from flask import Response, make_response, render_template, request

from billing_core.access import actions
from billing_core.agencies import pricebook, topups, tree, views
from billing_core.agencies.commands import ResaleMultiplierRequest, ResalePriceRowRequest, SubAccountTopUp
from billing_core.agencies.statements import agency_cost
from billing_core.calls import admission
from billing_core.catalog.models import terms_from_request
from billing_core.corrections.events import list_corrections, net_cost
from billing_core.errors import BillingError, ValidationFailed
from billing_core.invoicing import invoices
from billing_core.invoicing.invoices import Period
from billing_core.ledger import expiry
from billing_core.usage import events, history
from web.api.agencies import multiplier_out
from web.api.answers import amount, as_json
from web.api.catalog import price_out
from web.api.invoicing import invoice_file, invoice_summary, stored_document
from web.api.ledger import wallet_with_grants
from web.api.usage import usage_event_detail, usage_event_out
from web.errors import status_for
from web.pages.common import PageRefused, current_session, public_redirect
from web.pages.portal import portal, tenant_of
from web.parsing import parse, path_uuid
from web.runtime import unit_of_work


def _agency() -> str:
    """The session's tenant, which must be an agency: any other portal has no sub-accounts (404)."""
    tenant_id = tenant_of(current_session())
    with unit_of_work() as uow:
        if not tree.is_agency(uow, tenant_id):
            raise PageRefused(404, "Not found", "This account has no sub-accounts.")
    return tenant_id


def _line(s: views.TreeLine) -> dict[str, Any]:
    return {"tenantId": s.tenant_id, "funding": s.funding, "spendCap": amount(s.spend_cap), "status": s.status,
            "balance": amount(s.balance), "revenue": amount(s.revenue), "cost": amount(s.cost),
            "margin": amount(s.margin), "events": s.events}


@portal.get("/sub-accounts")
def sub_accounts_page() -> str:
    """The agency's sub-accounts: status, balance (prepaid), this month's resale revenue, its cost and margin."""
    agency_id = _agency()
    with unit_of_work() as uow:
        month = Period.containing(uow.now())
        lines = views.tree_lines(uow, agency_id, month.start, month.end)
    return render_template("portal/sub_accounts.html", month=month.label, lines=[_line(s) for s in lines])


# --- one sub-account, as its agency sees it ----------------------------------------------------------

DONE = {"topup": "Topped up."}


def _sub_account_page(tenant_id: str, error: BillingError | None = None, status: int = 200,
                      form: dict[str, str] | None = None) -> Response:
    agency_id = _agency()
    with unit_of_work() as uow:
        tree.sub_account_of(uow, agency_id, tenant_id)  # only the agency's own: 404 otherwise
        month = Period.containing(uow.now())
        [line] = [s for s in views.tree_lines(uow, agency_id, month.start, month.end) if s.tenant_id == tenant_id]
        wallet, grants = expiry.end_due_and_read_wallet(uow, tenant_id)
        calls = admission.read_concurrency(uow.connection, tenant_id)
        recent, _ = history.list_usage_events(uow, tenant_id, history.UsageFilter(), limit=20)
        found, _ = invoices.list_invoices(uow, tenant_id, limit=24)
    body = render_template(
        "portal/sub_account.html", month=month.label, line=_line(line),
        wallet=as_json(wallet_with_grants(wallet, grants, calls)),
        recent=[as_json(usage_event_out(e)) for e in recent], invoices=[as_json(invoice_summary(i)) for i in found],
        error=error, form=form or {}, notice=DONE.get(request.args.get("done", "")), new_key=str(uuid.uuid4()))
    return make_response(body, status)


@portal.get("/sub-accounts/<tenant_id>")
def sub_account_page(tenant_id: str) -> Response:
    return _sub_account_page(tenant_id)


@portal.post("/sub-accounts/<tenant_id>/topup")
def sub_account_topup(tenant_id: str) -> Response:
    """POST /sub-accounts/<id>/topups from a form: the key minted with the form, so sending it twice tops
    up once; recorded with the session in the top-up's transaction."""
    session = current_session()
    agency_id = _agency()
    form = {name: request.form[name] for name in ("amount", "idempotencyKey", "description")
            if request.form.get(name)}
    try:
        command = parse(SubAccountTopUp, form)
        with unit_of_work() as uow:
            tree.sub_account_of(uow, agency_id, tenant_id)
            actions.record(uow, session, tenant_id, "sub_account.topup", command.model_dump(mode="json"))
            topups.top_up_sub_account(uow, agency_id, tenant_id, amount=command.amount,
                                      idempotency_key=command.idempotencyKey, description=command.description,
                                      created_by=f"portal:{agency_id}")  # commits the record with the top-up
    except BillingError as exc:
        if exc.code == "not_found":
            raise
        return _sub_account_page(tenant_id, exc, status_for(exc.code, exc.details), form)
    return public_redirect("portal.sub_account_page", tenant_id=tenant_id, done="topup")


@portal.get("/sub-accounts/<tenant_id>/usage/<usage_event_id>")
def sub_account_call(tenant_id: str, usage_event_id: str) -> str:
    """One of the sub-account's events at its resale price, with what LAD charged the agency for it."""
    agency_id = _agency()
    with unit_of_work() as uow:
        tree.sub_account_of(uow, agency_id, tenant_id)
        outcome = events.load_outcome(uow, tenant_id, path_uuid(usage_event_id, "usage event"), with_items=True)
        chain = list_corrections(uow, tenant_id, outcome.event.id)
        net = net_cost(uow, tenant_id, outcome.event)
        cost = agency_cost(uow, agency_id, outcome.event.id)
    detail = as_json(usage_event_detail(outcome, chain, net, agencyCost=cost))
    columns: list[str] = []
    for item in detail["items"]:
        columns += [key for key in item if key not in columns]
    return render_template("portal/sub_account_call.html", tenant_id=tenant_id, event=detail, columns=columns)


def _sub_account_document(tenant_id: str, invoice_id: str, extension: str) -> Response:
    agency_id = _agency()
    with unit_of_work() as uow:
        tree.sub_account_of(uow, agency_id, tenant_id)
        document = stored_document(uow, tenant_id, path_uuid(invoice_id, "invoice"))
    return invoice_file(document, extension)


@portal.get("/sub-accounts/<tenant_id>/invoices/<invoice_id>.pdf")
def sub_account_invoice_pdf(tenant_id: str, invoice_id: str) -> Response:
    return _sub_account_document(tenant_id, invoice_id, "pdf")


@portal.get("/sub-accounts/<tenant_id>/invoices/<invoice_id>.csv")
def sub_account_invoice_csv(tenant_id: str, invoice_id: str) -> Response:
    return _sub_account_document(tenant_id, invoice_id, "csv")


# --- the resale price book ---------------------------------------------------------------------------

SAVED = {"multiplier": "Saved: the multiplier.", "row": "Saved: the price row."}
SCOPE = ("category", "provider", "model", "unit")
ROW_FIELDS = (*SCOPE, "subAccountId", "pricingModel", "unitPrice", "packageSize", "packagePrice",
              "minimumQuantity", "tiers", "description")


def _book_page(error: BillingError | None = None, status: int = 200, preview: pricebook.BookPreview | None = None,
               previewed: str | None = None, form: dict[str, str] | None = None) -> Response:
    agency_id = _agency()
    with unit_of_work() as uow:
        multipliers = pricebook.list_multipliers(uow, agency_id)
        rows = pricebook.list_rows(uow, agency_id)
        subs = [s.tenant_id for s in tree.list_sub_accounts(uow, agency_id)]
    shown = None if preview is None else {
        "from": preview.start.isoformat(), "to": preview.end.isoformat(), "items": preview.items,
        "current": amount(preview.current), "proposed": amount(preview.proposed),
        "agencyCost": amount(preview.agency_cost)}
    body = render_template(
        "portal/price_book.html", multipliers=[as_json(multiplier_out(m)) for m in multipliers],
        rows=[{"subAccountId": owner, **as_json(price_out(p))} for owner, p in rows], sub_accounts=subs,
        error=error, preview=shown, previewed=previewed, form=form or {},
        notice=SAVED.get(request.args.get("saved", "")))
    return make_response(body, status)


@portal.get("/sub-accounts/prices")
def price_book() -> Response:
    return _book_page()


def _filled(*names: str) -> dict[str, str]:
    return {name: request.form[name].strip() for name in names if request.form.get(name, "").strip()}


@portal.post("/sub-accounts/prices/multiplier")
def put_multiplier() -> Response:
    """PUT /sub-accounts/prices (button `save`) or its preview (button `preview`, nothing written)."""
    session = current_session()
    agency_id = _agency()
    form = _filled("multiplier", *SCOPE, "subAccountId")
    try:
        command = parse(ResaleMultiplierRequest, form)
        with unit_of_work() as uow:
            if command.subAccountId is not None:
                tree.sub_account_of(uow, agency_id, command.subAccountId)
            if request.form.get("do") == "preview":
                return _book_page(preview=pricebook.preview(uow, agency_id, command), previewed="multiplier",
                                  form=form)
            actions.record(uow, session, agency_id, "resale_multiplier.put", command.model_dump(mode="json"))
            pricebook.put_multiplier(uow, agency_id, command)  # commits the record with the row
    except BillingError as exc:
        return _book_page(exc, status_for(exc.code, exc.details), previewed="multiplier", form=form)
    return public_redirect("portal.price_book", saved="multiplier")


def _tiers(text: str) -> list[dict[str, str | None]]:
    """One tier a line: `<upTo> <unitPrice>`, the last with `-` (or nothing) as upTo for no ceiling."""
    tiers: list[dict[str, str | None]] = []
    for line in text.splitlines():
        parts = re.split(r"[\s,;]+", line.strip())
        if parts == [""]:
            continue
        if len(parts) == 1:
            parts = ["-", parts[0]]
        if len(parts) != 2:
            raise ValidationFailed("tiers", "one tier a line: the upper bound (or -) and the unit price")
        tiers.append({"upTo": None if parts[0] in ("-", "∞") else parts[0], "unitPrice": parts[1]})
    return tiers


@portal.post("/sub-accounts/prices/row")
def put_row() -> Response:
    """PUT /sub-accounts/prices/rows (button `save`) or its preview (button `preview`, nothing written)."""
    session = current_session()
    agency_id = _agency()
    form = _filled(*ROW_FIELDS)
    try:
        body: dict[str, Any] = {k: v for k, v in form.items() if k != "tiers"}
        body.setdefault("pricingModel", "unit")
        if body["pricingModel"] == "graduated":
            body["tiers"] = _tiers(form.get("tiers", ""))
        command = parse(ResalePriceRowRequest, body)
        terms = terms_from_request(
            command.pricingModel, unit_price=command.unitPrice, package_size=command.packageSize,
            package_price=command.packagePrice, minimum_quantity=command.minimumQuantity,
            tiers=None if command.tiers is None else [t.model_dump() for t in command.tiers])
        key = (command.category, command.provider, command.model, command.unit)
        with unit_of_work() as uow:
            if command.subAccountId is not None:
                tree.sub_account_of(uow, agency_id, command.subAccountId)
            if request.form.get("do") == "preview":
                proposal = pricebook.ProposedRow(command.subAccountId, key, terms)
                return _book_page(preview=pricebook.preview(uow, agency_id, proposal), previewed="row", form=form)
            actions.record(uow, session, agency_id, "resale_row.put", command.model_dump(mode="json"))
            pricebook.put_row(uow, agency_id, command.subAccountId, key, terms, None, command.description)
    except BillingError as exc:
        return _book_page(exc, status_for(exc.code, exc.details), previewed="row", form=form)
    return public_redirect("portal.price_book", saved="row")
