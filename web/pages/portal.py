"""The tenant's billing portal under /portal: overview, usage, one call, invoices and settings. Views are
as thin as API handlers: the session gives the tenant, billing_core does the work, the API's own
response models give every number exactly as the API shows it."""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from flask import Blueprint, Response, g, make_response, render_template, request

from billing_core.access import actions, sessions
from billing_core.access.sessions import PageSession
from billing_core.agencies import tree
from billing_core.calls import admission, statement
from billing_core.corrections.events import list_corrections, net_cost
from billing_core.documents import credit_notes, parties, receipts
from billing_core.errors import BillingError
from billing_core.invoicing import invoices
from billing_core.invoicing.invoices import Period
from billing_core.ledger import expiry
from billing_core.lifecycle import budgets, holds
from billing_core.lifecycle.commands import BudgetRequest
from billing_core.notifications import alerts
from billing_core.notifications.alerts import AlertSettingsRequest
from billing_core.payments.auto_topup import customers
from billing_core.payments.auto_topup import rules as auto_topup_rules
from billing_core.payments.auto_topup.rules import AutoTopupRequest
from billing_core.reports import spend
from billing_core.usage import events, history
from web.api import calls as calls_api
from web.api.answers import amount, as_json, timestamp
from web.api.invoicing import (
    credit_note_out,
    invoice_file,
    invoice_out,
    invoice_summary,
    receipt_out,
    stored_document,
)
from web.api.ledger import wallet_with_grants
from web.api.lifecycle import budget_out, reservation_out
from web.api.notifications import _check_soon as check_alerts_soon
from web.api.notifications import alert_settings_out
from web.api.payments import auto_topup_out, stripe_answering, stripe_gateway
from web.api.payments import check_soon as check_auto_topup_soon
from web.api.payments import configured as auto_topup_configured
from web.api.usage import summary_out, usage_event_detail, usage_event_out
from web.errors import ApiError, status_for
from web.pages.common import PageRefused, close_session, current_session, install, open_link, public_redirect
from web.parsing import parse, path_uuid
from web.runtime import unit_of_work

portal = Blueprint("portal", __name__, url_prefix="/portal")
install(portal, sessions.PORTAL)

RANGES = (7, 30, 90)  # days the usage chart offers
MAX_RANGE_DAYS = 366


@portal.route("/open", methods=["GET", "POST"], endpoint="open")
def open_session() -> Response:
    return open_link(sessions.PORTAL, "portal.overview")


@portal.post("/sign-out")
def sign_out() -> Response:
    return close_session(sessions.PORTAL)


def tenant_of(session: PageSession) -> str:
    """A portal session's tenant (only console sessions have none, and the portal's guard admits none)."""
    if session.tenant_id is None:
        raise PageRefused(403, "Not a portal session", "Open the portal from its own link.")
    return session.tenant_id


@portal.get("/")
def overview() -> str:
    tenant_id = tenant_of(current_session())
    with unit_of_work() as uow:
        wallet, grants = expiry.end_due_and_read_wallet(uow, tenant_id)
        calls = admission.read_concurrency(uow.connection, tenant_id)
        active_holds, _ = holds.list_holds(uow, tenant_id, status="active", limit=50, cursor=None)
        alert_settings = alerts.get_settings(uow, tenant_id)
        recent, _ = history.list_usage_events(uow, tenant_id, history.UsageFilter(), limit=10)
    low = [state for state in (alert_settings.states if alert_settings else []) if not state.armed]
    return render_template("portal/overview.html", wallet=as_json(wallet_with_grants(wallet, grants, calls)),
                           holds=[as_json(reservation_out(r)) for r in active_holds],
                           recent=[as_json(usage_event_out(e)) for e in recent],
                           low_alerts=[{"threshold": amount(s.threshold), "eventType": s.event_type,
                                        "since": timestamp(s.last_fired_at)} for s in low],
                           depleted=wallet.available_balance <= 0)


def _usage_range(now: datetime) -> tuple[datetime, datetime, dict[str, str]]:
    """The chosen range: whole UTC days from `from` to `to` (dates, at most a year), else the last
    `days` (7, 30 or 90; default 30) up to today; and the query that names it."""
    first: date | None
    last: date | None
    try:
        first, last = date.fromisoformat(request.args["from"]), date.fromisoformat(request.args["to"])
    except (KeyError, ValueError):
        first = last = None
    if first and last and first <= last and (last - first).days < MAX_RANGE_DAYS:
        start = datetime.combine(first, time(), tzinfo=timezone.utc)
        return start, datetime.combine(last + timedelta(days=1), time(), tzinfo=timezone.utc), \
            {"from": first.isoformat(), "to": last.isoformat()}
    days = int(request.args["days"]) if request.args.get("days") in {str(d) for d in RANGES} else 30
    end = datetime.combine(now.astimezone(timezone.utc).date() + timedelta(days=1), time(), tzinfo=timezone.utc)
    return end - timedelta(days=days), end, {"days": str(days)}


@portal.get("/usage")
def usage_page() -> str:
    tenant_id = tenant_of(current_session())
    asked = request.args.get("by")
    by = asked if asked in spend.GROUPINGS else "feature"
    with unit_of_work() as uow:
        start, end, chosen = _usage_range(uow.now())
        daily = spend.daily_spend(uow, tenant_id, start, end, by)
        calls = spend.top_calls(uow, tenant_id, start, end)
        summary = history.summarize_usage(uow, tenant_id, history.UsageFilter(start=start, end=end))
    rows = [{"day": day.isoformat(),
             "costs": [amount(daily.cost[(day, group)]) if (day, group) in daily.cost else "0"
                       for group in daily.groups]} for day in daily.days]
    label = f"{chosen['days']} days" if "days" in chosen else f"{chosen['from']} to {chosen['to']}"
    return render_template("portal/usage.html", chosen=chosen, label=label, by=by, ranges=RANGES,
                           groups=daily.groups, rows=rows, totals=[amount(daily.total(g)) for g in daily.groups],
                           first_day=daily.days[0].isoformat(), last_day=daily.days[-1].isoformat(),
                           calls=[as_json(usage_event_out(e)) for e in calls],
                           summary=as_json(summary_out(summary)))


@portal.get("/usage/<usage_event_id>")
def call(usage_event_id: str) -> str:
    tenant_id = tenant_of(current_session())
    with unit_of_work() as uow:
        outcome = events.load_outcome(uow, tenant_id, path_uuid(usage_event_id, "usage event"), with_items=True)
        chain = list_corrections(uow, tenant_id, outcome.event.id)
        net = net_cost(uow, tenant_id, outcome.event)
    detail = as_json(usage_event_detail(outcome, chain, net))
    # every field the item representation has, in its order: breakdowns added later appear as they come
    columns: list[str] = []
    for item in detail["items"]:
        columns += [key for key in item if key not in columns]
    return render_template("portal/call.html", event=detail, columns=columns)


@portal.get("/calls/<path:external_reference_id>")
def call_statement(external_reference_id: str) -> str:
    """One call's statement, as GET /calls/<externalReferenceId> gives the tenant (no provider cost)."""
    tenant_id = tenant_of(current_session())
    with unit_of_work() as uow:
        found = statement.call_statement(uow.connection, tenant_id, calls_api.reference(external_reference_id))
    return render_template("portal/call_statement.html", call=as_json(calls_api.call_out(found, operator=False)))


@portal.context_processor
def _agency() -> dict[str, Any]:
    """An agency's portal also lists its sub-accounts (the nav shows the page to agencies only); a
    sub-account's portal carries its agency's name, not LAD's (white label)."""
    session = g.get("lad_page_session")
    if session is None or session.tenant_id is None:
        return {"is_agency": False, "brand": None}
    with unit_of_work() as uow:
        sub = tree.find_sub_account(uow, session.tenant_id)
        brand = None
        if sub is not None:
            brand = (parties.customer_block(uow, sub.agency_id) or {}).get("legalName") or sub.agency_id
        return {"is_agency": sub is None and tree.is_agency(uow, session.tenant_id), "brand": brand}


@portal.get("/invoices")
def invoices_page() -> str:
    tenant_id = tenant_of(current_session())
    with unit_of_work() as uow:
        open_month = Period.containing(uow.now())
        invoices.end_what_is_due_in_open_month(uow, tenant_id, open_month)
    with unit_of_work() as uow:
        found, _ = invoices.list_invoices(uow, tenant_id, limit=24)
        found_receipts, _ = receipts.list_receipts(uow, tenant_id, limit=24)
        notes, _ = credit_notes.list_credit_notes(uow, tenant_id, limit=24)
        draft = invoices.preview(uow, tenant_id, open_month)
    return render_template("portal/invoices.html", invoices=[as_json(invoice_summary(i)) for i in found],
                           receipts=[as_json(receipt_out(r)) for r in found_receipts],
                           credit_notes=[as_json(credit_note_out(n)) for n in notes],
                           draft=as_json(invoice_out(draft)))


def _invoice_download(invoice_id: str, extension: str) -> Response:
    tenant_id = tenant_of(current_session())
    with unit_of_work() as uow:
        document = stored_document(uow, tenant_id, path_uuid(invoice_id, "invoice"))  # an invoice or a receipt
    return invoice_file(document, extension)


@portal.get("/invoices/<invoice_id>.pdf")
def invoice_pdf_download(invoice_id: str) -> Response:
    return _invoice_download(invoice_id, "pdf")


@portal.get("/invoices/<invoice_id>.csv")
def invoice_csv_download(invoice_id: str) -> Response:
    return _invoice_download(invoice_id, "csv")


# --- settings the tenant's admin may change --------------------------------------------------------


# what a settings page may say it did: a key in the address, never text from it
NOTICES = {"alerts": "Saved: alerts.", "budgets": "Saved: budgets.", "budget-removed": "Removed the budget.",
           "auto-topup": "Saved: auto top-up."}


def _settings_page(error: BillingError | ApiError | None = None, status: int = 200,
                   auto_topup_form: dict[str, str] | None = None,
                   card_setup: customers.CardSetup | None = None) -> Response:
    tenant_id = tenant_of(current_session())
    with unit_of_work() as uow:
        found = alerts.get_settings(uow, tenant_id)
        budget_list = budgets.list_budgets(uow, tenant_id)
        rule = auto_topup_rules.get_rule(uow, tenant_id)
        spent = auto_topup_rules.spent_this_month(uow, tenant_id)
    cards, cards_unavailable = _cards(tenant_id)
    settings = as_json(alert_settings_out(found)) if found else None
    if settings:
        settings.pop("webhookSecret")  # shown to the API's admins only
    body = render_template("portal/settings.html", alerts=settings, budgets=[as_json(budget_out(b)) for b in budget_list],
                           auto_topup=as_json(auto_topup_out(rule, spent)) if rule else None,
                           auto_topup_available=auto_topup_configured(), unavailable=UNAVAILABLE,
                           auto_topup_form=auto_topup_form, cards=cards, cards_unavailable=cards_unavailable,
                           card_setup=card_setup, error=error, notice=NOTICES.get(request.args.get("saved", "")))
    return make_response(body, status)


def _cards(tenant_id: str) -> tuple[list[customers.Card] | None, bool]:
    """The cards on the tenant's own Stripe customer (None: no customer yet), and whether Stripe failed to say."""
    if not auto_topup_configured():
        return None, False
    try:
        with unit_of_work() as uow:
            return customers.cards_of(uow, stripe_gateway().customers, tenant_id), False
    except customers.StripeUnavailable:
        return None, True


@portal.get("/settings")
def settings() -> Response:
    return _settings_page()


def _saved(what: str) -> Response:
    return public_redirect("portal.settings", saved=what)


@portal.post("/settings/alerts")
def put_alerts() -> Response:
    session = current_session()
    form = request.form
    body = {"thresholds": [t for t in re.split(r"[\s,;]+", form.get("thresholds", "")) if t],
            "webhookUrl": form.get("webhookUrl") or None, "email": form.get("email") or None}
    try:
        command = parse(AlertSettingsRequest, body)
    except BillingError as exc:
        return _settings_page(exc, 400)
    with unit_of_work() as uow:
        actions.record(uow, session, tenant_of(session), "alerts.put", command.model_dump(mode="json"))
        alerts.put_settings(uow, tenant_of(session), command)  # commits the record with the change
    check_alerts_soon(tenant_of(session))
    return _saved("alerts")


@portal.post("/settings/budgets")
def put_budget() -> Response:
    session = current_session()
    form = request.form
    try:
        feature_key = budgets.valid_feature_key(form.get("featureKey", ""))  # the API's own check of its path
        command = parse(BudgetRequest, {"limit": form.get("limit", ""), "period": form.get("period"),
                                        "action": form.get("action") or "reject"})
    except BillingError as exc:
        return _settings_page(exc, 400)
    with unit_of_work() as uow:
        actions.record(uow, session, tenant_of(session), "budget.put",
                       {"featureKey": feature_key, **command.model_dump(mode="json", exclude={"tenantId"})})
        # the API's use case: takes the wallet lock, commits the record with the change
        budgets.set_budget(uow, tenant_of(session), feature_key, spend_limit=command.limit, period=command.period,
                           action=command.action)
    return _saved("budgets")


@portal.post("/settings/budgets/delete")
def delete_budget() -> Response:
    """The feature key is a form field, not part of the address: a key may hold a "/"."""
    session = current_session()
    feature_key = request.form.get("featureKey", "")
    with unit_of_work() as uow:
        actions.record(uow, session, tenant_of(session), "budget.delete", {"featureKey": feature_key})
        budgets.remove_budget(uow, tenant_of(session), feature_key)  # NotFound rolls the record back too
    return _saved("budget-removed")


@portal.post("/settings/payment-methods")
def add_payment_method() -> Response:
    """POST /settings/payment-methods from a button: a SetupIntent for the tenant's own Stripe customer,
    shown on the page (never in an address) for Stripe.js to confirm where the card is typed."""
    session = current_session()
    if not auto_topup_configured():
        return _settings_page(ApiError("unavailable", UNAVAILABLE), 503)
    with unit_of_work() as uow, stripe_answering():
        actions.record(uow, session, tenant_of(session), "payment_method.setup", {})
        setup = customers.start_card_setup(uow, stripe_gateway().customers, tenant_of(session))  # commits both
    return _settings_page(card_setup=setup)


@portal.post("/settings/auto-topup")
def put_auto_topup() -> Response:
    """PUT /settings/auto-topup from a form: the same request model, the same use case (which checks the
    card with Stripe, validates and commits the record with the rule), then the same immediate check.
    Saving the same form again leaves the same rule."""
    session = current_session()
    if not auto_topup_configured():
        return _settings_page(ApiError("unavailable", UNAVAILABLE), 503)
    form = request.form
    body: dict[str, Any] = {name: form[name] for name in AUTO_TOPUP_FIELDS if form.get(name)}
    body["enabled"] = form.get("enabled") == "on"
    cooldown = form.get("cooldownSeconds", "")
    if cooldown:  # whole seconds in ASCII digits ("²" is a digit to isdigit()); else the model refuses it by name
        body["cooldownSeconds"] = int(cooldown) if cooldown.isascii() and cooldown.isdigit() else cooldown
    try:
        command = parse(AutoTopupRequest, body)
        with unit_of_work() as uow, stripe_answering():
            actions.record(uow, session, tenant_of(session), "auto_topup.put", command.model_dump(mode="json"))
            # validates and checks the card with Stripe; commits the record with the rule
            auto_topup_rules.put_rule(uow, tenant_of(session), command, stripe_gateway().customers)
    except (BillingError, ApiError) as exc:  # shown with what was typed, to correct
        status = exc.status if isinstance(exc, ApiError) else status_for(exc.code, exc.details)
        return _settings_page(exc, status, auto_topup_form=form.to_dict())
    check_auto_topup_soon(tenant_of(session))
    return _saved("auto-topup")


AUTO_TOPUP_FIELDS = ("threshold", "rechargeTo", "amount", "maxPerMonth", "stripePaymentMethodId")
UNAVAILABLE = "Auto top-up is unavailable: this service has no Stripe account configured (STRIPE_SECRET_KEY)."
