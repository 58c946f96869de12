"""The operators' console under /console: tenants, one tenant (wallet, ledger, usage, grants, holds and
the money actions), the catalog, margins, and operations (backlog, reconciliation, failed notifications).
Every action goes through the same billing_core use case as the API, with an idempotency key minted
when the form was drawn (a double submit replays) and a mandatory reason, recorded with the change."""
from __future__ import annotations

import uuid
from typing import Any, Literal

from flask import Blueprint, Response, make_response, render_template, request

from billing_core.access import actions, sessions
from billing_core.calls import admission, plans, statement
from billing_core.calls.commands import CallPlanRequest
from billing_core.catalog import costs
from billing_core.corrections import rerates
from billing_core.corrections.commands import CorrectionRequest, RerateRequest
from billing_core.corrections.events import correct_usage_event, list_corrections, net_cost
from billing_core.errors import BillingError, NotFound, ValidationFailed
from billing_core.fields import Reason, Strict
from billing_core.invoicing import margins as margin_groupings
from billing_core.ledger import credits, expiry, verification
from billing_core.ledger.commands import AdjustmentRequest, RefundRequest, TopUpRequest
from billing_core.ledger.wallets import change_settings
from billing_core.lifecycle import budgets, holds
from billing_core.payments.auto_topup import attempts as auto_topups
from billing_core.reports import operators
from billing_core.usage import history
from billing_core.usage.events import load_outcome
from tasks.corrections import rerate as rerate_task
from web.api import calls as calls_api
from web.api.answers import amount, as_json, timestamp
from web.api.catalog import cost_out, price_out
from web.api.corrections import rerate_out, rerate_scope
from web.api.invoicing import MarginsQuery, margins_report
from web.api.ledger import call_plan_out, transaction_out, verification_fields, wallet_out, wallet_with_grants
from web.api.lifecycle import budget_out, reservation_out
from web.api.payments import attempt_out
from web.api.usage import usage_event_detail, usage_event_out
from web.auth import TENANT_ID
from web.errors import status_for
from web.pages.common import close_session, current_session, install, open_link, public_redirect
from web.parsing import parse, path_uuid
from web.runtime import runtime, unit_of_work

console = Blueprint("console", __name__, url_prefix="/console")
install(console, sessions.CONSOLE)


@console.get("/open", endpoint="open")
def open_session() -> Response:
    return open_link(sessions.CONSOLE, "console.tenants")


@console.post("/sign-out")
def sign_out() -> Response:
    return close_session(sessions.CONSOLE)


@console.get("/")
def tenants() -> str:
    search = (request.args.get("q") or "").strip()[:64] or None
    flagged, blocked = request.args.get("flagged") == "1", request.args.get("blocked") == "1"
    with unit_of_work() as uow:
        found = operators.tenants(uow, search, flagged=flagged, blocked=blocked)
        slots = operators.call_slots(uow.connection)
    return render_template("console/tenants.html", search=search or "", flagged=flagged, blocked=blocked,
                           call_slots=slots, at_limit=sum(s.active >= s.ceiling for s in slots),
                           tenants=[{**as_json(wallet_out(w)), "updatedAt": timestamp(w.updated_at)} for w in found])


def _known_tenant(uow: Any, tenant_id: str) -> str:
    """Only tenants with a wallet are shown: looking never creates one."""
    if not TENANT_ID.match(tenant_id) or not operators.tenant_exists(uow, tenant_id):
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant_id


def _chain(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Newest first: each entry's balanceBefore must be the balanceAfter of the one before it."""
    for newer, older in zip(entries, entries[1:], strict=False):
        newer["chained"] = newer["balanceBefore"] == older["balanceAfter"]
    return entries


# what a tenant's page may say was done: an action's name in the address, never text from it
DONE = {"topup": "top-up", "adjustment": "adjustment", "refund": "refund", "block": "block", "unblock": "unblock",
        "call_plan": "call plan"}


def _tenant_page(tenant_id: str, error: BillingError | None = None, status: int = 200) -> Response:
    with unit_of_work() as uow:
        _known_tenant(uow, tenant_id)
        wallet, grants = expiry.end_due_and_read_wallet(uow, tenant_id)
        calls = admission.read_concurrency(uow.connection, tenant_id)
        plan = plans.load_plan(uow.connection, tenant_id)
        entries, _ = verification.list_entries(uow, tenant_id, limit=50)
        events, _ = history.list_usage_events(uow, tenant_id, history.UsageFilter(), limit=20)
        active_holds, _ = holds.list_holds(uow, tenant_id, status="active", limit=50, cursor=None)
        budget_list = budgets.list_budgets(uow, tenant_id)
        recorded = actions.recent(uow, tenant_id, limit=20)
        books = verification.verify(uow, tenant_id)
        topups = auto_topups.list_attempts(uow, tenant_id, limit=20)
    body = render_template(
        "console/tenant.html", tenant_id=tenant_id, wallet=as_json(wallet_with_grants(wallet, grants, calls)),
        plan=as_json(call_plan_out(plan)), entries=_chain([as_json(transaction_out(e)) for e in entries]),
        events=[as_json(usage_event_out(e)) for e in events], holds=[as_json(reservation_out(r)) for r in active_holds],
        budgets=[as_json(budget_out(b)) for b in budget_list],
        actions=[{**a, "created_at": timestamp(a["created_at"])} for a in recorded],
        verification=verification_fields(books), auto_topups=[as_json(attempt_out(a)) for a in topups],
        error=error, notice=DONE.get(request.args.get("done", "")),
        new_key=str(uuid.uuid4()))
    return make_response(body, status)


@console.get("/tenants/<tenant_id>")
def tenant(tenant_id: str) -> Response:
    return _tenant_page(tenant_id)


def _act(tenant_id: str, action: str, run: Any) -> Response:
    """Run one money or status action for the tenant, recorded with the session in its transaction."""
    session = current_session()
    try:
        with unit_of_work() as uow:
            _known_tenant(uow, tenant_id)
            command, done = run(uow, session)
            actions.record(uow, session, tenant_id, action, command)
            done()  # the use case commits: the record and the change together
    except BillingError as exc:
        if isinstance(exc, NotFound) and exc.message.startswith("tenant "):
            raise
        return _tenant_page(tenant_id, exc, status=status_for(exc.code, exc.details))
    return public_redirect("console.tenant", tenant_id=tenant_id, done=action)


def _form(*names: str) -> dict[str, Any]:
    """The named fields that were filled in (an empty field is a missing one)."""
    return {name: request.form[name] for name in names if request.form.get(name)}


@console.post("/tenants/<tenant_id>/topup")
def topup(tenant_id: str) -> Response:
    def run(uow: Any, session: sessions.PageSession) -> Any:
        fields = _form("amount", "kind", "description", "idempotencyKey")
        if "description" not in fields:
            raise ValidationFailed("description", "a reason is required")
        command = parse(TopUpRequest, fields)
        return command.model_dump(mode="json"), lambda: credits.top_up(
            uow, tenant_id, command, created_by=f"console:{session.created_by or session.id}")
    return _act(tenant_id, "topup", run)


@console.post("/tenants/<tenant_id>/adjustment")
def adjustment(tenant_id: str) -> Response:
    def run(uow: Any, session: sessions.PageSession) -> Any:
        fields = _form("amount", "reason", "idempotencyKey")
        command = parse(AdjustmentRequest, fields)
        return command.model_dump(mode="json"), lambda: credits.adjust(
            uow, tenant_id, command, created_by=f"console:{session.created_by or session.id}")
    return _act(tenant_id, "adjustment", run)


@console.post("/tenants/<tenant_id>/refund")
def refund(tenant_id: str) -> Response:
    def run(uow: Any, session: sessions.PageSession) -> Any:
        fields = _form("transactionId", "amount", "reason", "idempotencyKey")
        command = parse(RefundRequest, fields)
        return command.model_dump(mode="json"), lambda: credits.refund(
            uow, tenant_id, command, created_by=f"console:{session.created_by or session.id}")
    return _act(tenant_id, "refund", run)


class WalletStatusChange(Strict):
    """Block or unblock from the console: always with the reason, which is recorded with the change."""
    status: Literal["active", "blocked"]
    reason: Reason


@console.post("/tenants/<tenant_id>/status")
def wallet_status(tenant_id: str) -> Response:
    def run(uow: Any, session: sessions.PageSession) -> Any:
        command = parse(WalletStatusChange, _form("status", "reason"))

        return command.model_dump(mode="json"), lambda: change_settings(
            uow, tenant_id, status=command.status, overdraft_limit=None, clear_flag=False)
    return _act(tenant_id, "block" if request.form.get("status") == "blocked" else "unblock", run)


class CallPlanChange(CallPlanRequest):
    """The call plan from the console: every field of the form is sent (an empty one clears it), always
    with the reason, which is recorded with the change."""
    reason: Reason


def _call_plan_form() -> dict[str, Any]:
    """The form's fields as PATCH /wallet's: counts are integers, an empty field is null (no limit)."""
    fields: dict[str, Any] = {"reason": request.form.get("reason", ""),
                              "settlementPolicy": request.form.get("settlementPolicy") or "grace"}
    for name in ("maxConcurrentCalls", "burstLimit"):
        given = (request.form.get(name) or "").strip()
        if given and not given.isdigit():
            raise ValidationFailed(name, "must be a whole number, or empty for no limit")
        fields[name] = int(given) if given else None
    for name in ("burstMultiplier", "callGraceLimit"):
        fields[name] = (request.form.get(name) or "").strip() or None
    return fields


@console.post("/tenants/<tenant_id>/call-plan")
def call_plan(tenant_id: str) -> Response:
    """Set the tenant's call plan (as PATCH /wallet does), recorded as a page action with its reason."""
    def run(uow: Any, session: sessions.PageSession) -> Any:
        command = parse(CallPlanChange, _call_plan_form())
        return command.model_dump(mode="json"), lambda: plans.set_plan(uow, tenant_id, command)
    return _act(tenant_id, "call_plan", run)


@console.get("/tenants/<tenant_id>/calls", defaults={"external_reference_id": None})
@console.get("/tenants/<tenant_id>/calls/<path:external_reference_id>")
def call_statement(tenant_id: str, external_reference_id: str | None) -> str:
    """One call's statement as GET /calls/<externalReferenceId> gives the operator (with provider cost
    and margin); the tenant page's look-up form sends the reference as `ref`."""
    reference = calls_api.reference(external_reference_id or (request.args.get("ref") or "").strip())
    with unit_of_work() as uow:
        _known_tenant(uow, tenant_id)
        found = statement.call_statement(uow.connection, tenant_id, reference)
    return render_template("console/call_statement.html", tenant_id=tenant_id,
                           call=as_json(calls_api.call_out(found, operator=True)))


@console.get("/catalog")
def catalog() -> str:
    with unit_of_work() as uow:
        rows = operators.price_rows(uow)
        cost_rows = costs.list_costs(uow)  # as GET /costs lists them: every item's history, by start
    return render_template("console/catalog.html", prices=[as_json(price_out(p)) for p in rows],
                           costs=[as_json(cost_out(c)) for c in cost_rows])


@console.get("/margins")
def margins() -> Response:
    """GET /margins in a page: the same query fields (an empty form field is an absent one), the same
    report, so the page shows exactly the API's figures for the same period."""
    chosen = {name: value for name, value in request.args.items() if value and name in MARGIN_FIELDS}
    report, error = None, None
    try:
        query = parse(MarginsQuery, chosen)
        with runtime().read_engine.connect() as connection:
            report = as_json(margins_report(connection, query))
            connection.rollback()
    except BillingError as exc:
        error = exc
    body = render_template("console/margins.html", report=report, error=error, chosen=chosen,
                           groupings=list(margin_groupings.GROUPINGS))
    return make_response(body, 200 if error is None else status_for(error.code, error.details))


MARGIN_FIELDS = ("from", "to", "groupBy", "tenantId")


# --- corrections: re-rates, and one event's correction chain --------------------------------------------

RERATE_FIELDS = ("from", "to", "tenantId", "category", "provider", "model", "unit")


@console.get("/rerates")
def rerates_page() -> Response:
    """The re-rate form; with `dry=1`, the dry run's table (nothing written) and the apply button below it."""
    chosen = {name: value for name, value in request.args.items() if value and name in RERATE_FIELDS}
    dry, error = None, None
    if request.args.get("dry") == "1":
        try:
            command = parse(RerateRequest, {**chosen, "dryRun": True})
            with unit_of_work() as uow:
                dry = as_json(rerate_out(rerates.dry_run(uow, rerate_scope(command))))
        except BillingError as exc:
            error = exc
    body = render_template("console/rerates.html", chosen=chosen, dry=dry, error=error, fields=RERATE_FIELDS,
                           new_key=str(uuid.uuid4()))
    return make_response(body, 200 if error is None else status_for(error.code, error.details))


@console.post("/rerates")
def rerate_apply() -> Response:
    """Start the run the dry run showed (its key minted with the form: a double submit answers the same run)."""
    session = current_session()
    chosen = _form(*RERATE_FIELDS, "idempotencyKey")
    try:
        command = parse(RerateRequest, {**chosen, "dryRun": False})
        with unit_of_work() as uow:
            started = rerates.start_run(uow, rerate_scope(command), command.idempotencyKey or str(uuid.uuid4()),
                                        requested_by=f"console:{session.created_by or session.id}")
        if started.status == rerates.RUNNING:
            rerate_task.apply_async(args=[str(started.id)], retry=False)
    except BillingError as exc:
        body = render_template("console/rerates.html", chosen=chosen, dry=None, error=exc, fields=RERATE_FIELDS,
                               new_key=str(uuid.uuid4()))
        return make_response(body, status_for(exc.code, exc.details))
    return public_redirect("console.rerate_progress", rerate_id=str(started.id))


@console.get("/rerates/<rerate_id>")
def rerate_progress(rerate_id: str) -> str:
    with unit_of_work() as uow:
        found = rerates.get_run(uow, path_uuid(rerate_id, "re-rate"))
    return render_template("console/rerate.html", run=as_json(rerate_out(found)))


@console.get("/tenants/<tenant_id>/usage/<usage_event_id>")
def usage_event_page(tenant_id: str, usage_event_id: str, error: BillingError | None = None) -> Response:
    """One event as charged, with its correction chain and net cost, and the void form."""
    with unit_of_work() as uow:
        _known_tenant(uow, tenant_id)
        outcome = load_outcome(uow, tenant_id, path_uuid(usage_event_id, "usage event"), with_items=True)
        chain = list_corrections(uow, tenant_id, outcome.event.id)
        net = net_cost(uow, tenant_id, outcome.event)
    body = render_template("console/usage_event.html", tenant_id=tenant_id,
                           event=as_json(usage_event_detail(outcome, chain, net)), error=error,
                           new_key=str(uuid.uuid4()))
    return make_response(body, 200 if error is None else status_for(error.code, error.details))


@console.post("/tenants/<tenant_id>/usage/<usage_event_id>/void")
def usage_event_void(tenant_id: str, usage_event_id: str) -> Response:
    session = current_session()
    try:
        with unit_of_work() as uow:
            _known_tenant(uow, tenant_id)
            command = parse(CorrectionRequest, {"action": "void", **_form("reason", "idempotencyKey")})
            actions.record(uow, session, tenant_id, "void", command.model_dump(mode="json"))
            correct_usage_event(uow, tenant_id, path_uuid(usage_event_id, "usage event"), command,
                                created_by=f"console:{session.created_by or session.id}")
    except BillingError as exc:
        if isinstance(exc, NotFound) and exc.message.startswith("tenant "):
            raise
        return usage_event_page(tenant_id, usage_event_id, exc)
    return public_redirect("console.usage_event_page", tenant_id=tenant_id, usage_event_id=usage_event_id)


@console.get("/operations")
def operations() -> str:
    with unit_of_work() as uow:
        backlog = operators.pending_backlog(uow)
        runs = operators.reconciliation_history(uow)
        failed = operators.failed_notifications(uow)
    return render_template(
        "console/operations.html", backlog=backlog,
        runs=[{**r, "slot": timestamp(r["slot"]), "oldest_pending_seconds": amount(r["oldest_pending_seconds"])}
              for r in runs],
        failed=[{**n, "failed_at": timestamp(n["failed_at"])} for n in failed])
