"""Monthly invoices on the real stack: a month's history (charges, top-ups, a refund, adjustments, an
expiry, holds, and an event accepted in that month but charged in the next) is invoiced, and the invoice
reconciles to the unit against the ledger; lines are grouped and rounded once, half to even; JSON, CSV
and PDF agree; the draft equals what the rollup writes; the rollup run twice, concurrently, and by the
live worker exactly as beat sends it, changes nothing the second time; finalized invoices refuse UPDATE
and DELETE; tenants see only their own invoices.

How the history gets a past month. Ledger entries are append-only (the database refuses UPDATE), and
billing_core writes them with created_at = now(). A finished month is what the rollup is for, so the
month under test is the previous calendar month, and its history is written through the real
billing_core functions (credits.top_up, usage.accept_charge + charging.charge_pending_batch,
credits.refund, credits.adjust, reservations.reserve/release, WalletBook) in this test process, with
one change: `ledger_dated(t)` makes WalletBook.flush's INSERT of ledger entries carry created_at = t,
as if the transaction had run at t. The usage events, which are not append-only, get the times those
transactions would have given them (created_at, and charged_at = the debit's time) by UPDATE. The live
worker and web are untouched: everything they write is dated now, which is how the late event (accepted
in the previous month, charged now by the worker) lands in the current month. The current month's
history goes through the HTTP API and the worker, and is checked through the preview (its draft).
"""
from __future__ import annotations

import csv
import io
import threading
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pypdf import PdfReader
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from billing_core.db import UnitOfWork, engine_for
from billing_core.invoicing import invoices
from billing_core.invoicing.invoices import Period
from tests.support.invoices import CALL, COMPLETION, PRICES, PROMPT, STT, TTS, History, half_even, items, months
from tests.support.jobs import sweep_pending_charges
from tests.support.polling import eventually

# --- writing history in a past month --------------------------------------------------------------







def expected_usage_lines(charges: list[dict[str, Any]], prior: set[uuid.UUID] = frozenset()) -> dict[tuple, dict]:
    """What the usage lines must be, from the charges alone: grouped, exact, rounded once half to even."""
    lines: dict[tuple, dict] = defaultdict(lambda: {"quantity": Decimal(0), "exact": Decimal(0), "items": 0})
    for charge in charges:
        for item in charge["items"]:
            key4 = (item["category"], item["provider"], item["model"], item["unit"])
            key = (charge["feature"], *key4, charge["event"] in prior)
            lines[key]["quantity"] += Decimal(item["quantity"])
            lines[key]["exact"] += Decimal(item["quantity"]) * PRICES[key4]
            lines[key]["items"] += 1
    for line in lines.values():
        line["amount"] = half_even(line["exact"])
        line["difference"] = line["amount"] - line["exact"]
    return dict(lines)


def line_key(line: dict[str, Any]) -> tuple:
    return (line["featureKey"], line["category"], line["provider"], line["model"], line["unit"], line["priorPeriod"])


def ledger_entries_between(api: Any, token: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The tenant's ledger entries dated in [start, end), oldest first, through GET /transactions."""
    found, cursor = [], ""
    while True:
        page = api.get(f"/api/billing/transactions?limit=500&from={start.isoformat().replace('+00:00', 'Z')}"
                       f"&to={(end - timedelta(microseconds=1)).isoformat().replace('+00:00', 'Z')}{cursor}", token)
        assert page.status_code == 200, page.text
        body = page.json()
        found += body["transactions"]
        if not body["nextCursor"]:
            return list(reversed(found))
        cursor = f"&cursor={body['nextCursor']}"


def assert_reconciles_with_ledger(invoice: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """The invoice against the ledger entries of its month, to the unit."""
    money = [e for e in entries if e["type"] not in ("hold", "hold_release")]
    by_type: dict[str, Decimal] = defaultdict(Decimal)
    for entry in money:
        by_type[entry["type"]] += Decimal(entry["amount"])
    assert Decimal(invoice["openingBalance"]) == Decimal(money[0]["balanceBefore"])
    assert Decimal(invoice["closingBalance"]) == Decimal(money[-1]["balanceAfter"])
    assert Decimal(invoice["totalUsageExact"]) == -by_type["debit"]
    assert Decimal(invoice["credits"]["topups"]) == by_type["topup"]
    assert Decimal(invoice["credits"]["refunds"]) == by_type["refund"]
    assert Decimal(invoice["credits"]["adjustments"]) == by_type["adjustment"]
    assert Decimal(invoice["credits"]["expiries"]) == by_type["expiry"]
    assert Decimal(invoice["totalCredits"]) == sum((by_type[t] for t in ("topup", "refund", "adjustment", "expiry")),
                                                   Decimal(0))
    # opening + credits - debits = closing, exactly; the rounded total differs by the rounding shown
    assert (Decimal(invoice["openingBalance"]) + Decimal(invoice["totalCredits"]) - Decimal(invoice["totalUsageExact"])
            == Decimal(invoice["closingBalance"]))
    assert Decimal(invoice["totalUsage"]) - Decimal(invoice["totalUsageExact"]) == Decimal(invoice["roundingDifference"])
    assert invoice["reconciliation"]["balanced"] is True
    assert invoice["ledger"]["entries"] == len(money)


def assert_lines(invoice: dict[str, Any], expected: dict[tuple, dict]) -> None:
    found = {line_key(line): line for line in invoice["lines"]}
    assert set(found) == set(expected)
    for key, want in expected.items():
        line = found[key]
        assert Decimal(line["quantity"]) == want["quantity"], key
        assert Decimal(line["exactAmount"]) == want["exact"], key
        assert Decimal(line["amount"]) == want["amount"], key
        assert Decimal(line["roundingDifference"]) == want["difference"], key
        assert line["items"] == want["items"], key
        assert Decimal(line["unitPrice"]) == PRICES[key[1:5]], key
    assert Decimal(invoice["totalUsage"]) == sum((w["amount"] for w in expected.values()), Decimal(0))
    assert Decimal(invoice["roundingDifference"]) == sum((w["difference"] for w in expected.values()), Decimal(0))
    assert [line["lineNumber"] for line in invoice["lines"] + invoice["creditLines"]] == \
        list(range(1, len(invoice["lines"]) + len(invoice["creditLines"]) + 1))


def without_identity(invoice: dict[str, Any]) -> dict[str, Any]:
    """An invoice without what only a stored one has (id, status, times, its number)."""
    return {k: v for k, v in invoice.items()
            if k not in ("id", "status", "createdAt", "finalizedAt", "number", "issuedAt")}


def celery():
    from tasks.app import celery_app

    return celery_app


# --- the month under test -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def month(live, make_token) -> dict[str, Any]:
    """Tenant A's history in the previous month, and one event accepted then but left to the worker,
    which charges it now (in the current month)."""
    engine = engine_for(live.env["DATABASE_URL"])
    previous, current = months()
    tenant = f"inv-{uuid.uuid4().hex[:10]}"
    history = History(engine, tenant)
    day = previous.start + timedelta(days=1)

    def at(hours: int) -> datetime:
        return day + timedelta(hours=hours)

    history.top_up(at(0), "10")
    history.charge(at(1), "transcribe", items((STT, "125")))
    history.charge(at(2), "transcribe", items((STT, "125")))  # 250 s: 0.025, half to even 0.02
    history.charge(at(3), "assistant", items((PROMPT, "1000"), (COMPLETION, "250")))  # 0.03 and 0.015 -> 0.02
    history.charge(at(4), "speak", items((TTS, "333")))  # 0.004995 -> 0
    call_hold = history.hold(at(5), "call", "0.05")
    call_debit = history.charge(at(6), "call", items((CALL, "2.5")), reservation_id=call_hold)  # 0.0325 -> 0.03
    history.charge(at(7), "meeting", items((STT, "125")))  # the same catalog key, another feature: its own line
    spare_hold = history.hold(at(8), "misc", "0.02")
    history.release(at(9), spare_hold)
    history.refund(at(10), call_debit, "0.01")
    history.adjust(at(11), "0.5")
    history.adjust(at(12), "-0.2")
    history.expired_promotion(at(13), "0.75")
    # accepted in the month, and charged only now by the live worker (as if pending through an outage)
    late_event = history.accept(previous.start + timedelta(days=20), "transcribe", items((STT, "100")))
    return {"tenant": tenant, "history": history, "previous": previous, "current": current, "engine": engine,
            "late_event": late_event, "call_debit": call_debit,
            "admin": make_token(tenant, "billing.admin"), "view": make_token(tenant, "billing.view"),
            "charge": make_token(tenant, "billing.charge", "billing.view")}


def test_the_month_is_invoiced_and_reconciles_to_the_unit_with_the_ledger(api, month):
    tenant, previous, view, admin = month["tenant"], month["previous"], month["view"], month["admin"]
    draft = api.get(f"/api/billing/invoices/preview?period={previous.label}", view)
    assert draft.status_code == 200, draft.text
    draft = draft.json()["invoice"]
    assert draft["status"] == "draft" and draft["id"] is None

    rollup = api.post(f"/api/billing/invoices/rollup?period={previous.label}&tenantId={tenant}", admin)
    assert rollup.status_code == 200, rollup.text
    ran = rollup.json()["rollup"]
    assert (ran["period"], ran["invoicesCreated"], len(ran["invoiceIds"])) == (previous.label, 1, 1)
    invoice_id = ran["invoiceIds"][0]
    assert ran["linesCreated"] == len(draft["lines"]) + len(draft["creditLines"])

    listed = api.get("/api/billing/invoices", view).json()
    assert [(i["id"], i["period"], i["status"]) for i in listed["invoices"]] == [(invoice_id, previous.label, "finalized")]
    response = api.get(f"/api/billing/invoices/{invoice_id}", view)
    assert response.status_code == 200, response.text
    invoice = response.json()["invoice"]
    assert (invoice["id"], invoice["tenantId"], invoice["period"], invoice["status"], invoice["currency"]) == \
        (invoice_id, tenant, previous.label, "finalized", "USD")
    assert invoice["finalizedAt"] and invoice["createdAt"]
    assert invoice["periodStart"] == previous.start.isoformat().replace("+00:00", "Z")

    # against the ledger (the public GET /transactions), to the unit
    entries = ledger_entries_between(api, view, previous.start, previous.end)
    assert {e["type"] for e in entries} == {"topup", "debit", "hold", "hold_release", "refund", "adjustment", "expiry"}
    assert_reconciles_with_ledger(invoice, entries)
    assert Decimal(invoice["openingBalance"]) == 0
    assert Decimal(invoice["closingBalance"]) == Decimal("10.190005")

    # usage lines: grouped by feature and catalog key, rounded once per line, half to even
    assert_lines(invoice, expected_usage_lines(month["history"].charges))
    transcribe = next(line for line in invoice["lines"] if line["featureKey"] == "transcribe")
    assert (transcribe["quantity"], transcribe["exactAmount"], transcribe["amount"], transcribe["roundingDifference"]) \
        == ("250", "0.025", "0.02", "-0.005")
    completion = next(line for line in invoice["lines"] if line["category"] == "llm_completion")
    assert (completion["exactAmount"], completion["amount"], completion["roundingDifference"]) == \
        ("0.015", "0.02", "0.005")
    assert (invoice["totalUsage"], invoice["totalUsageExact"], invoice["roundingDifference"]) == \
        ("0.11", "0.119995", "-0.009995")
    assert not any(line["priorPeriod"] for line in invoice["lines"])  # the late event is not this month's

    # credits: top-ups by kind, the refund by feature, adjustments by direction, the expiry
    assert {(c["type"], c["description"], c["amount"], c["entries"]) for c in invoice["creditLines"]} == {
        ("topup", "paid top-ups", "10", 1), ("topup", "promotional top-ups", "0.75", 1),
        ("refund", "refunds of call", "0.01", 1), ("adjustment", "credit adjustments", "0.5", 1),
        ("adjustment", "debit adjustments", "-0.2", 1), ("expiry", "promotional credits expired", "-0.75", 1)}
    assert invoice["credits"] == {"topups": "10.75", "refunds": "0.01", "adjustments": "0.3", "expiries": "-0.75"}
    assert invoice["totalCredits"] == "10.31"

    # the draft was what the rollup wrote
    assert without_identity(draft) == without_identity(invoice)


def test_csv_and_pdf_carry_the_same_invoice(api, month):
    view = month["view"]
    invoice = api.get("/api/billing/invoices", view).json()["invoices"][0]
    full = api.get(f"/api/billing/invoices/{invoice['id']}", view).json()["invoice"]

    as_csv = api.get(f"/api/billing/invoices/{invoice['id']}.csv", view)
    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in as_csv.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert {r["invoiceId"] for r in rows} == {invoice["id"]}
    usage_rows = [r for r in rows if r["lineType"] == "usage"]
    assert len(usage_rows) == len(full["lines"])
    for row, line in zip(usage_rows, full["lines"], strict=True):
        assert (row["featureKey"], row["category"], row["quantity"], row["exactAmount"]) == \
            (line["featureKey"], line["category"], line["quantity"], line["exactAmount"])
        assert Decimal(row["amount"]) == Decimal(line["amount"]) and len(row["amount"].split(".")[1]) == 2
        assert Decimal(row["roundingDifference"]) == Decimal(line["roundingDifference"])
    assert len([r for r in rows if r["lineType"] in ("topup", "refund", "adjustment", "expiry")]) == \
        len(full["creditLines"])
    totals = {r["lineType"]: r["amount"] for r in rows if r["lineNumber"] == ""}
    assert totals["total_usage"] == "0.11"
    assert Decimal(totals["opening_balance"]) == Decimal(full["openingBalance"])
    assert Decimal(totals["closing_balance"]) == Decimal(full["closingBalance"])
    assert Decimal(totals["total_credits"]) == Decimal(full["totalCredits"])
    assert Decimal(totals["rounding_difference"]) == Decimal(full["roundingDifference"])

    as_pdf = api.get(f"/api/billing/invoices/{invoice['id']}.pdf", view)
    assert as_pdf.status_code == 200
    assert as_pdf.headers["Content-Type"] == "application/pdf"
    assert as_pdf.content.startswith(b"%PDF-")
    pdf_text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(as_pdf.content)).pages)
    assert month["tenant"] in pdf_text and month["previous"].label in pdf_text
    for label, amount in (("Opening balance", "0"), ("Total usage", "0.11"), ("Total credits", "10.31"),
                          ("Rounding difference", "-0.009995"), ("Closing balance", "10.190005")):
        assert f"{label}" in pdf_text and f"{amount} USD" in pdf_text, (label, amount, pdf_text)
    assert "whisper-1" in pdf_text and "0.025" in pdf_text  # a usage line, exact and rounded


def test_the_current_month_draft_has_the_late_event_as_a_prior_period_line(api, month, make_token, clock):
    """The current month through the HTTP API and the worker; its draft (nothing stored) reconciles with
    the ledger, and the event accepted last month and charged now is a prior-period line of this month,
    while last month's finalized invoice stays exactly as it was."""
    tenant, previous, current = month["tenant"], month["previous"], month["current"]
    admin, view, charge = month["admin"], month["view"], month["charge"]
    finalized = api.get("/api/billing/invoices", view).json()["invoices"][0]
    before = api.get(f"/api/billing/invoices/{finalized['id']}", view).json()["invoice"]

    assert api.post("/api/billing/topup", admin, json={"amount": "2", "idempotencyKey": str(uuid.uuid4())}).ok
    now_charges = []
    for feature, lines in (("transcribe", items((STT, "125"))), ("transcribe", items((STT, "125"))),
                           ("assistant", items((COMPLETION, "250")))):
        response = api.post("/api/billing/charge", charge, json={"featureKey": feature, "items": lines,
                                                                  "idempotencyKey": str(uuid.uuid4())})
        assert response.status_code == 200, response.text
        now_charges.append({"feature": feature, "items": lines, "event": uuid.UUID(response.json()["usageEvent"]["id"]),
                            "debit": response.json()["transaction"]["id"]})
    refund = api.post("/api/billing/refunds", admin, json={"transactionId": now_charges[0]["debit"], "amount": "0.005",
                                                           "reason": "partial", "idempotencyKey": str(uuid.uuid4())})
    assert refund.status_code == 200, refund.text
    assert api.post("/api/billing/adjustments", admin, json={"amount": "-0.1", "reason": "fee",
                                                             "idempotencyKey": str(uuid.uuid4())}).ok
    hold = api.post("/api/billing/reservations", charge, json={"featureKey": "misc", "amount": "0.02",
                                                               "idempotencyKey": str(uuid.uuid4())})
    assert hold.status_code == 200, hold.text
    assert api.post(f"/api/billing/reservations/{hold.json()['reservation']['id']}/release", charge).ok
    # a promotional grant that expires in two seconds, ended by the expiry job as beat sends it
    engine = month["engine"]
    with engine.connect() as connection:
        expires = connection.execute(text("SELECT now() + interval '2 seconds'")).scalar_one()
    assert api.post("/api/billing/topup", admin, json={
        "amount": "0.3", "kind": "promotional", "priority": 100, "idempotencyKey": str(uuid.uuid4()),
        "expiresAt": expires.isoformat()}).ok

    def database_now() -> datetime:
        with engine.connect() as connection:
            return connection.execute(text("SELECT now()")).scalar_one()

    clock.advance(2)  # past the grant's expiry, for every process
    eventually(lambda: database_now() > expires, 90, what="the grant's expiry")
    celery().send_task("billing.expire_credits")  # beat sends it every minute in production
    eventually(lambda: api.get("/api/billing/transactions?type=expiry", view).json()["transactions"], 90,
               what="the promotional credits to expire")

    def late_event() -> dict[str, Any] | None:
        event = api.get(f"/api/billing/usage/{month['late_event']}", view).json()["usageEvent"]
        return event if event["status"] != "pending" else None

    sweep_pending_charges(clock)  # as beat's pending sweep does, every few seconds in production
    assert eventually(late_event, 90, what="the late event to be charged")["status"] == "charged"

    response = api.get("/api/billing/invoices/preview", view)  # default: the current month
    assert response.status_code == 200, response.text
    draft = response.json()["invoice"]
    assert (draft["status"], draft["id"], draft["period"]) == ("draft", None, current.label)
    entries = ledger_entries_between(api, view, current.start, current.end)
    assert_reconciles_with_ledger(draft, entries)
    assert draft["openingBalance"] == before["closingBalance"]  # the month starts where the last one ended
    wallet = api.get("/api/billing/wallet", view).json()["wallet"]
    assert draft["closingBalance"] == wallet["currentBalance"]

    late_charge = {"feature": "transcribe", "items": items((STT, "100")), "event": month["late_event"]}
    expected = expected_usage_lines(now_charges + [late_charge], prior={month["late_event"]})
    assert_lines(draft, expected)
    prior = [line for line in draft["lines"] if line["priorPeriod"]]
    assert [(p["featureKey"], p["quantity"], p["amount"], p["items"]) for p in prior] == [("transcribe", "100", "0.01", 1)]
    assert prior[0]["description"]
    assert draft["lines"][-1]["priorPeriod"]  # after the month's own lines
    assert {c["type"] for c in draft["creditLines"]} == {"topup", "refund", "adjustment", "expiry"}
    assert draft["credits"]["expiries"] == "-0.3"

    # last month's invoice was not touched; the current month cannot be finalized yet
    assert api.get(f"/api/billing/invoices/{finalized['id']}", view).json()["invoice"] == before
    refused = api.post(f"/api/billing/invoices/rollup?period={current.label}&tenantId={tenant}", admin)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "period_not_closed"
    assert refused.json()["error"]["details"]["state"] == "open"
    assert [i["period"] for i in api.get("/api/billing/invoices", view).json()["invoices"]] == [previous.label]


def test_finalized_invoices_refuse_update_and_delete(api, month):
    engine, view = month["engine"], month["view"]
    invoice_id = api.get("/api/billing/invoices", view).json()["invoices"][0]["id"]
    refused = [
        ("UPDATE invoices SET closing_balance = 0 WHERE id = :id", {}),
        ("DELETE FROM invoices WHERE id = :id", {}),
        ("UPDATE invoice_lines SET amount = 0 WHERE invoice_id = :id", {}),
        ("DELETE FROM invoice_lines WHERE invoice_id = :id", {}),
        ("TRUNCATE invoice_lines", {}),
        ("INSERT INTO invoice_lines (invoice_id, tenant_id, line_no, line_type, item_count, exact_amount, amount,"
         " rounding_difference) VALUES (:id, :tenant, 999, 'adjustment', 1, 1, 1, 0)", {"tenant": month["tenant"]}),
    ]
    for statement, extra in refused:
        with pytest.raises(DBAPIError, match="immutable"):
            with engine.begin() as connection:
                connection.execute(text(statement), {"id": invoice_id, **extra})
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT closing_balance, (SELECT count(*) FROM invoice_lines WHERE "
                                         "invoice_id = :id) FROM invoices WHERE id = :id"), {"id": invoice_id}).one()
    assert stored[0] == Decimal("10.190005") and stored[1] > 0


def test_tenants_see_only_their_own_invoices(api, month, make_token):
    other = f"inv-other-{uuid.uuid4().hex[:8]}"
    invoice_id = api.get("/api/billing/invoices", month["view"]).json()["invoices"][0]["id"]
    other_view = make_token(other, "billing.view")
    for suffix in ("", ".csv", ".pdf"):
        response = api.get(f"/api/billing/invoices/{invoice_id}{suffix}", other_view)
        assert response.status_code == 404, suffix
        assert response.json()["error"]["code"] == "not_found"
    assert api.get("/api/billing/invoices", other_view).json()["invoices"] == []
    named = api.get(f"/api/billing/invoices?tenantId={month['tenant']}", other_view)
    assert named.status_code == 403 and named.json()["error"]["code"] == "forbidden"
    assert api.get(f"/api/billing/invoices/preview?tenantId={month['tenant']}", other_view).status_code == 403
    # an operator's billing.admin token may name the tenant
    operator = make_token(other, "billing.admin")
    assert api.get(f"/api/billing/invoices/{invoice_id}?tenantId={month['tenant']}", operator).status_code == 200
    assert api.get(f"/api/billing/invoices/{invoice_id}", operator).status_code == 404
    # the rollup is an operator's: billing.view cannot run it
    previous = month["previous"].label
    refused = api.post(f"/api/billing/invoices/rollup?period={previous}", month["view"])
    assert refused.status_code == 403


def test_bad_periods_and_ids_have_clear_errors(api, tokens):
    view, admin = tokens["view"], tokens["admin"]
    previous, current = months()
    for bad in ("2026-13", "2026-00", "abc", "2026-1", "26-01", "2026-01-01", "0999-01"):
        response = api.get(f"/api/billing/invoices/preview?period={bad}", view)
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == "validation_error"
        assert response.json()["error"]["details"]["field"] == "period"
        response = api.post(f"/api/billing/invoices/rollup?period={bad}", admin)
        assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "period", bad
    missing = api.post("/api/billing/invoices/rollup", admin)
    assert missing.status_code == 400 and missing.json()["error"]["details"]["field"] == "period"
    for period, state in ((current, "open"), (current.next(), "future")):
        response = api.post(f"/api/billing/invoices/rollup?period={period.label}", admin)
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "period_not_closed"
        assert response.json()["error"]["details"]["state"] == state
    future = api.get(f"/api/billing/invoices/preview?period={current.next().label}", view)
    assert future.status_code == 409 and future.json()["error"]["code"] == "period_not_started"
    for bad_id in ("not-a-uuid", str(uuid.uuid4())):
        response = api.get(f"/api/billing/invoices/{bad_id}", view)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    bad_from = api.get("/api/billing/invoices?from=2026-99", view)
    assert bad_from.status_code == 400 and bad_from.json()["error"]["details"]["field"] == "from"
    bad_cursor = api.get("/api/billing/invoices?cursor=nonsense", view)
    assert bad_cursor.status_code == 400 and bad_cursor.json()["error"]["details"]["field"] == "cursor"
    assert api.get("/api/billing/invoices").status_code == 401
    assert api.get(f"/api/billing/invoices/preview?period={previous.label}", tokens["any"]).status_code == 403




def test_only_money_makes_an_invoice_and_an_idle_month_has_an_empty_draft(api, live, make_token):
    """Holds move no money: a month with only a hold and its release has no invoice; its draft has no
    lines and the balance it started with. A tenant never seen has an empty draft too."""
    engine = engine_for(live.env["DATABASE_URL"])
    previous, _ = months()
    tenant = f"inv-{uuid.uuid4().hex[:10]}"
    history = History(engine, tenant)
    history.top_up(previous.start - timedelta(days=10), "3")
    hold = history.hold(previous.start + timedelta(days=3), "misc", "1")
    history.release(previous.start + timedelta(days=4), hold)
    with UnitOfWork(engine) as uow:
        assert invoices.rollup(uow, previous, tenant_id=tenant).created == []
    draft = api.get(f"/api/billing/invoices/preview?period={previous.label}", make_token(tenant, "billing.view"))
    assert draft.status_code == 200, draft.text
    draft = draft.json()["invoice"]
    assert (draft["lines"], draft["creditLines"], draft["openingBalance"], draft["closingBalance"]) == ([], [], "3", "3")
    assert draft["reconciliation"]["balanced"] is True
    never = api.get("/api/billing/invoices/preview", make_token(f"inv-{uuid.uuid4().hex[:10]}", "billing.view"))
    assert never.status_code == 200
    assert (never.json()["invoice"]["openingBalance"], never.json()["invoice"]["lines"]) == ("0", [])


def test_an_entry_begun_before_midnight_and_chained_after_it_belongs_to_the_next_month(api, live, make_token):
    """created_at is when a transaction began. One that began just before midnight can take the wallet
    lock after one that began just after: its entry is dated in the old month but chained after an entry
    of the new one. It belongs to the new month (the month of the latest date at or before it in the
    chain), so each month is one piece of the chain and both invoices reconcile; its event was accepted
    before the month, so it is a prior-period line."""
    engine = engine_for(live.env["DATABASE_URL"])
    previous, current = months()
    tenant = f"inv-{uuid.uuid4().hex[:10]}"
    history = History(engine, tenant)
    history.top_up(previous.start + timedelta(days=2), "1")
    history.top_up(current.start + timedelta(seconds=1), "2")
    history.charge(current.start - timedelta(seconds=1), "transcribe", items((STT, "125")),
                   accepted_at=current.start - timedelta(seconds=2))
    with UnitOfWork(engine) as uow:
        result = invoices.rollup(uow, previous, tenant_id=tenant)
    assert len(result.created) == 1
    view = make_token(tenant, "billing.view")
    invoice = api.get(f"/api/billing/invoices/{result.created[0][0]}", view).json()["invoice"]
    assert (invoice["openingBalance"], invoice["closingBalance"], invoice["credits"]["topups"], invoice["lines"]) == \
        ("0", "1", "1", [])
    assert invoice["ledger"]["entries"] == 1
    draft = api.get("/api/billing/invoices/preview", view).json()["invoice"]
    assert (draft["openingBalance"], draft["closingBalance"], draft["credits"]["topups"]) == ("1", "2.9875", "2")
    assert [(line["featureKey"], line["exactAmount"], line["priorPeriod"]) for line in draft["lines"]] == \
        [("transcribe", "0.0125", True)]
    assert draft["reconciliation"]["balanced"] is True and draft["ledger"]["entries"] == 2


def test_invoices_page_newest_first_and_each_month_starts_where_the_last_ended(api, live, make_token):
    engine = engine_for(live.env["DATABASE_URL"])
    previous, _ = months()
    periods = [previous.previous().previous(), previous.previous(), previous]
    tenant = f"inv-{uuid.uuid4().hex[:10]}"
    history = History(engine, tenant)
    for n, period in enumerate(periods):
        history.top_up(period.start + timedelta(days=5), str(n + 1))
        history.charge(period.start + timedelta(days=6), "transcribe", items((STT, "125")))
        with UnitOfWork(engine) as uow:
            assert len(invoices.rollup(uow, period, tenant_id=tenant).created) == 1
    view = make_token(tenant, "billing.view")
    first = api.get("/api/billing/invoices?limit=2", view).json()
    assert [i["period"] for i in first["invoices"]] == [periods[2].label, periods[1].label]
    second = api.get(f"/api/billing/invoices?limit=2&cursor={first['nextCursor']}", view).json()
    assert [i["period"] for i in second["invoices"]] == [periods[0].label] and second["nextCursor"] is None
    everything = list(reversed(first["invoices"] + second["invoices"]))
    for before, after in zip(everything, everything[1:], strict=False):
        assert after["openingBalance"] == before["closingBalance"]
    assert everything[-1]["closingBalance"] == str(Decimal(6) - 3 * Decimal("0.0125"))
    ranged = api.get(f"/api/billing/invoices?from={periods[1].label}&to={periods[1].label}", view).json()
    assert [i["period"] for i in ranged["invoices"]] == [periods[1].label]


def test_a_ledger_that_does_not_reconcile_gets_no_invoice_and_the_others_still_do(api, live, make_token):
    """Nothing is fixed silently: a tenant whose chain is broken (an entry whose balance_before is not
    the balance before it), or whose usage does not add up to its debits, is refused and recorded with
    the reason; the other tenants of the month are invoiced."""
    engine = engine_for(live.env["DATABASE_URL"])
    previous, _ = months()
    broken_month = previous.previous().previous().previous()  # months no other test invoices
    differing_month = broken_month.previous()
    sound, broken, differing = (f"inv-{uuid.uuid4().hex[:10]}" for _ in range(3))
    History(engine, sound).top_up(broken_month.start + timedelta(days=2), "4")
    History(engine, broken).top_up(broken_month.start + timedelta(days=2), "4")
    with engine.begin() as connection:  # appended with a balance_before that is not the balance before it
        connection.execute(text("""
            INSERT INTO ledger_entries (id, tenant_id, wallet_id, entry_type, amount, balance_before, balance_after,
                                        created_at)
            SELECT gen_random_uuid(), tenant_id, id, 'topup', 1, 100, 101, :at FROM wallets WHERE tenant_id = :t
        """), {"t": broken, "at": broken_month.start + timedelta(days=3)})
    history = History(engine, differing)
    history.top_up(differing_month.start + timedelta(days=2), "4")
    history.charge(differing_month.start + timedelta(days=3), "transcribe", items((STT, "125")))
    with engine.begin() as connection:  # its charged_at no longer that of its debit
        connection.execute(text("UPDATE usage_events SET charged_at = now() WHERE tenant_id = :t"), {"t": differing})

    with UnitOfWork(engine) as uow:
        result = invoices.rollup(uow, broken_month)
    assert sound in {t for _, t in result.created} and broken not in {t for _, t in result.created}
    assert [(r["tenantId"], r["problem"]) for r in result.refused] == [(broken, "broken_chain")]
    assert (result.refused[0]["openingBalance"], result.refused[0]["credits"], result.refused[0]["closingBalance"]) == \
        ("0", "5", "101")  # 0 + 5 != 101: the appended entry claims a balance of 100 before it
    with engine.connect() as connection:
        recorded = connection.execute(text("SELECT refused FROM invoice_runs WHERE period = :p ORDER BY started_at DESC "
                                           "LIMIT 1"), {"p": broken_month.first_day}).scalar_one()
    assert [r["tenantId"] for r in recorded] == [broken]

    admin = make_token(differing, "billing.admin")
    response = api.post(f"/api/billing/invoices/rollup?period={differing_month.label}&tenantId={differing}", admin)
    assert response.status_code == 200, response.text
    ran = response.json()["rollup"]
    assert ran["invoicesCreated"] == 0
    assert [(r["tenantId"], r["problem"], r["usage"], r["debits"]) for r in ran["refused"]] == \
        [(differing, "usage_differs_from_debits", "0", "0.0125")]
    draft = api.get(f"/api/billing/invoices/preview?period={differing_month.label}", admin).json()["invoice"]
    assert draft["reconciliation"]["balanced"] is False
    assert draft["reconciliation"]["problem"] == "usage_differs_from_debits"
    for tenant in (broken, differing):
        assert api.get("/api/billing/invoices", make_token(tenant, "billing.view")).json()["invoices"] == []


# --- the job, twice and concurrently ------------------------------------------------------------------
# These run the monthly rollup for every tenant, as the job does: they come last in this module so the
# invoices the tests above create themselves are not created here first.

def snapshot(engine: Any, tenant: str) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(text("""
            SELECT i.id, i.period, i.created_at, i.closing_balance, l.line_no, l.amount, l.exact_amount
            FROM invoices i LEFT JOIN invoice_lines l ON l.invoice_id = i.id
            WHERE i.tenant_id = :t ORDER BY i.period, l.line_no"""), {"t": tenant})]


def small_month(engine: Any, previous: Period) -> str:
    tenant = f"inv-{uuid.uuid4().hex[:10]}"
    history = History(engine, tenant)
    history.top_up(previous.start + timedelta(days=3), "5")
    history.charge(previous.start + timedelta(days=4), "transcribe", items((STT, "125")))
    history.charge(previous.start + timedelta(days=5), "assistant", items((PROMPT, "1000"), (COMPLETION, "250")))
    return tenant


def test_the_rollup_run_twice_concurrently_changes_nothing_the_second_time(live):
    engine = engine_for(live.env["DATABASE_URL"])
    previous, _ = months()
    tenant = small_month(engine, previous)
    barrier = threading.Barrier(2)
    results: list[invoices.RollupResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            with UnitOfWork(engine) as uow:
                results.append(invoices.rollup(uow, previous))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    created_for_tenant = [[i for i, t in r.created if t == tenant] for r in results]
    assert sorted(len(ids) for ids in created_for_tenant) == [0, 1]
    first = snapshot(engine, tenant)
    assert len({row[0] for row in first}) == 1 and len(first) == 4  # one invoice: 3 usage lines, 1 top-up

    with UnitOfWork(engine) as uow:  # and once more, later
        again = invoices.rollup(uow, previous)
    assert [t for _, t in again.created if t == tenant] == []
    assert snapshot(engine, tenant) == first


def test_the_monthly_job_sent_as_beat_sends_it_twice_changes_nothing_the_second_time(live):
    """billing.rollup_invoices with no arguments (beat's entry) rolls up the previous month; sent twice
    at once, the live worker runs both (concurrency 4), and one of them writes nothing."""
    engine = engine_for(live.env["DATABASE_URL"])
    previous, _ = months()
    tenant = small_month(engine, previous)
    sent = [celery().send_task("billing.rollup_invoices").id for _ in range(2)]

    def runs() -> list[Any]:
        with engine.connect() as connection:
            found = connection.execute(text("SELECT task_id, period, invoices_created, tenant_id FROM invoice_runs "
                                            "WHERE task_id = ANY(:ids)"), {"ids": sent}).all()
        return found if len(found) == 2 else []

    finished = eventually(runs, 90, what="both rollup tasks to finish")
    assert {r.period for r in finished} == {previous.first_day} and {r.tenant_id for r in finished} == {None}
    assert sorted(r.invoices_created for r in finished) == [0, 1]  # this tenant's invoice, once
    rows = snapshot(engine, tenant)
    assert len({row[0] for row in rows}) == 1 and len(rows) == 4
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM invoices WHERE tenant_id = :t"), {"t": tenant}).scalar()
    assert count == 1
