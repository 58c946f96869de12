"""Agencies and sub-accounts, the money side (issue 21) on the real stack: an agency-funded
sub-account's holds are backed by its agency's wallet; refunds and corrections of a sub-account's
event move both levels; both levels' monthly invoices reconcile; many sub-accounts charge at once
through two worker processes; budgets, alerts and auto top-up at both levels."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import text

from billing_core.db import UnitOfWork, engine_for
from billing_core.ledger import credits
from billing_core.ledger.commands import TopUpRequest
from tests.e2e.test_agencies import B, balance, charge, create, entries, make_agency
from tests.support.helpers import Api, assert_ledger_consistent, stt_items, top_up, wallet
from tests.support.invoices import STT, History, ledger_dated, months
from tests.support.invoices import items as invoice_items
from tests.support.polling import eventually


def hold(api, token, **body):
    return api.post(f"{B}/reservations", token, json={"featureKey": "call", "idempotencyKey": f"h-{uuid.uuid4()}",
                                                      **body})


def reserved(api, make_token, tenant):
    return Decimal(wallet(api, make_token(tenant, "billing.view"))["reservedBalance"])


def test_an_agency_funded_sub_account_holds_on_its_agency_s_wallet(api, tenant, make_token, engine):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "2"})
    sub = create(api, manage, "calls", funding="agency", spendCap="5")
    token = make_token(sub, "billing.charge", "billing.view")

    opened = hold(api, token, items=stt_items("10000"))  # resale 2, the agency's price 1
    assert opened.status_code == 200, opened.text
    held = opened.json()["reservation"]
    assert held["amount"] == "2"
    # set aside on the agency's wallet at its price; the sub-account's own wallet sets nothing aside
    assert reserved(api, make_token, tenant) == Decimal(1) and reserved(api, make_token, sub) == 0

    settled = api.post(f"{B}/charge?wait=20", token, json={"featureKey": "call", "items": stt_items("5000"),
                                                   "reservationId": held["id"], "idempotencyKey": "s1"})
    assert settled.status_code == 200, settled.text
    event = settled.json()["usageEvent"]
    assert event["totalCost"] == "1"  # resale: 0.5 × 2
    assert (balance(api, make_token, tenant), reserved(api, make_token, tenant)) == (Decimal("9.5"), 0)
    assert (balance(api, make_token, sub), reserved(api, make_token, sub)) == (0, 0)
    after = api.get(f"{B}/reservations/{held['id']}", token).json()["reservation"]
    assert (after["status"], after["settledAmount"]) == ("settled", "1")
    assert [(str(e), a) for e, a in entries(engine, tenant)] == [(event["id"], Decimal("-0.5"))]
    margins = api.get(f"{B}/margins?groupBy=subAccount", manage).json()["margins"]
    assert (margins["revenue"], margins["cost"], margins["margin"]) == ("1", "0.5", "0.5")

    # released: the agency's backing goes with it
    second = hold(api, token, amount="1.5").json()["reservation"]
    assert reserved(api, make_token, tenant) == Decimal("1.5")  # an amount is set aside as it is
    extended = api.post(f"{B}/reservations/{second['id']}/extend", token, json={"amount": "0.5", "idempotencyKey": "x"})
    assert extended.status_code == 200, extended.text
    assert reserved(api, make_token, tenant) == Decimal(2)
    released = api.post(f"{B}/reservations/{second['id']}/release", token, json={"idempotencyKey": "r"})
    assert released.status_code == 200, released.text
    assert reserved(api, make_token, tenant) == 0 and reserved(api, make_token, sub) == 0

    # the spend cap (5 a month at resale): 1 charged, so a hold of 4.5 passes it
    capped = hold(api, token, amount="4.5")
    assert capped.status_code == 402, capped.text
    assert capped.json()["error"]["code"] == "budget_exceeded"
    assert capped.json()["error"]["details"]["spendCap"] == "5"
    # the agency's wallet cannot cover: refused, nothing moves
    big = create(api, manage, "big", funding="agency")
    short = hold(api, make_token(big, "billing.charge"), amount="50")
    assert short.status_code == 402, short.text
    assert short.json()["error"]["details"]["wallet"] == "agency"
    assert reserved(api, make_token, tenant) == 0 and reserved(api, make_token, big) == 0
    for who in (tenant, sub, big):
        assert_ledger_consistent(api, make_token, who)


def test_a_backing_hold_is_not_one_of_the_agency_s_own_calls(api, tenant, make_token):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    assert api.request("PATCH", f"{B}/wallet", admin, json={"maxConcurrentCalls": 2}).status_code == 200
    sub = create(api, manage, "slot", funding="agency")
    assert hold(api, make_token(sub, "billing.charge"), amount="1").status_code == 200
    mine = make_token(tenant, "billing.charge")
    assert hold(api, mine, amount="1").status_code == 200  # the tree: the sub-account's call and this one
    refused = hold(api, mine, amount="1")
    assert refused.status_code == 429, refused.text
    refused = hold(api, make_token(sub, "billing.charge"), amount="1")
    assert refused.status_code == 429 and refused.json()["error"]["details"]["level"] == "agency"


def test_a_refund_of_a_sub_account_charge_refunds_the_agency_s_share(api, tenant, make_token, engine):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "1.5"})
    sub = create(api, manage, "refunded")
    assert api.post(f"{B}/sub-accounts/{sub}/topups", manage,
                    json={"amount": "5", "idempotencyKey": "t"}).status_code == 200
    assert charge(api, make_token(sub, "billing.charge")).status_code == 200  # resale 1.5, the agency's 1
    sub_admin = make_token(sub, "billing.admin")
    [debit] = api.get(f"{B}/transactions?type=debit", sub_admin).json()["transactions"]

    def refund(amount=None):
        body = {"transactionId": debit["id"], "reason": "dropped call", "idempotencyKey": f"r-{uuid.uuid4()}"}
        response = api.post(f"{B}/refunds", sub_admin, json={**body, **({"amount": amount} if amount else {})})
        assert response.status_code == 200, response.text

    refund("0.5")  # a third of the resale: a third of the agency's price, to 12 places
    assert balance(api, make_token, sub) == Decimal("4")
    assert balance(api, make_token, tenant) == Decimal("9.333333333333")
    margins = api.get(f"{B}/margins?groupBy=subAccount", manage).json()["margins"]
    assert (margins["revenue"], margins["cost"], margins["margin"]) == ("1", "0.666666666667", "0.333333333333")
    # the operator's: LAD's revenue is the agency's price, less what LAD gave the agency back
    operator = api.get(f"{B}/margins?tenantId={sub}", make_token("operator", "billing.admin")).json()["margins"]
    assert Decimal(operator["revenue"]) + Decimal(operator["uncosted"]["revenue"]) == Decimal("0.666666666667")
    refund()  # the rest: the rest of the agency's price, exactly
    assert balance(api, make_token, sub) == Decimal("5") and balance(api, make_token, tenant) == Decimal("10")
    margins = api.get(f"{B}/margins?groupBy=subAccount", manage).json()["margins"]
    assert (margins["revenue"], margins["cost"], margins["margin"]) == ("0", "0", "0")
    for who in (tenant, sub):
        assert_ledger_consistent(api, make_token, who)


def test_both_levels_monthly_invoices_reconcile_for_both_funding_kinds(api, live, tenant, make_token):
    engine = engine_for(live.env["DATABASE_URL"])
    _, manage = make_agency(api, make_token, tenant)
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "1.25"})
    prepaid, funded = create(api, manage, "inv-prepaid"), create(api, manage, "inv-funded", funding="agency")
    previous, _ = months()
    day = previous.start + timedelta(days=3)
    History(engine, tenant).top_up(day, "20")
    with ledger_dated(day + timedelta(hours=1)), UnitOfWork(engine) as uow:
        credits.top_up(uow, prepaid, TopUpRequest(amount=Decimal(5), idempotencyKey="client"), created_by="test",
                       receipt=False)
    agency, client, billed = History(engine, tenant), History(engine, prepaid), History(engine, funded)
    agency.charge(day + timedelta(hours=2), "voice", invoice_items((STT, "10000")))  # its own: 1
    debit = client.charge(day + timedelta(hours=3), "voice", invoice_items((STT, "12345")))  # 1.543125; 1.2345
    billed.charge(day + timedelta(hours=4), "voice", invoice_items((STT, "10000")))  # 1.25; 1
    billed.charge(day + timedelta(hours=5), "voice", invoice_items((STT, "3333")))  # 0.416625; 0.3333
    client.refund(day + timedelta(hours=6), debit, "0.5")  # the agency gets back 1.2345 × 0.5 / 1.543125 = 0.4

    operator = make_token("operator", "billing.admin")
    found = {}
    for who in (prepaid, funded, tenant):
        rollup = api.post(f"{B}/invoices/rollup?period={previous.label}&tenantId={who}", operator)
        assert rollup.status_code == 200, rollup.text
        assert rollup.json()["rollup"]["refused"] == [], rollup.text
        [listed] = api.get(f"{B}/invoices?tenantId={who}", operator).json()["invoices"]
        found[who] = api.get(f"{B}/invoices/{listed['id']}?tenantId={who}", operator).json()["invoice"]
    for invoice in found.values():
        r = invoice["reconciliation"]
        assert r["balanced"] and Decimal(r["openingBalance"]) + Decimal(r["credits"]) - Decimal(r["usage"]) == \
            Decimal(r["closingBalance"]), invoice

    mine = found[prepaid]  # its wallet: 5 - 1.543125 + 0.5, at resale prices, issued by the agency
    assert (mine["totalUsageExact"], mine["closingBalance"]) == ("1.543125", "3.956875")
    assert mine["issuer"]["legalName"] != "" and mine["number"].startswith(f"{tenant}-")
    theirs = found[funded]  # no wallet of its own: its usage at resale, billed by the agency
    assert (theirs["totalUsageExact"], theirs["openingBalance"], theirs["closingBalance"]) == ("1.666625", "0", "0")
    assert [(c["type"], c["description"], c["amount"]) for c in theirs["creditLines"]] == [
        ("adjustment", "usage billed by the agency", "1.666625")]
    assert theirs["number"].startswith(f"{tenant}-")
    # the agency's from LAD: its own usage, each sub-account's at the agency's price, the refund of its share
    own = found[tenant]
    lines: dict[tuple[str, str], Decimal] = {}
    for line in own["lines"]:  # one line per sub-account, feature and price
        key = (line["category"], line["provider"])
        lines[key] = lines.get(key, Decimal(0)) + Decimal(line["exactAmount"])
    assert lines[("sub_account", prepaid)] == Decimal("1.2345") and lines[("sub_account", funded)] == Decimal("1.3333")
    assert Decimal(own["totalUsageExact"]) == 1 + Decimal("1.2345") + Decimal("1.3333")
    assert own["credits"]["refunds"] == "0.4"
    assert own["closingBalance"] == str(Decimal(20) - 1 - Decimal("1.2345") - Decimal("1.3333") + Decimal("0.4"))
    # and the agency's margins for the month: Σ resale − Σ agency price, net of the refund
    margins = api.get(f"{B}/margins?groupBy=subAccount&from={previous.start.isoformat()}"
                      f"&to={previous.end.isoformat()}".replace("+00:00", "Z"), manage).json()["margins"]
    assert Decimal(margins["revenue"]) == Decimal("1.543125") - Decimal("0.5") + Decimal("1.666625")
    assert Decimal(margins["cost"]) == Decimal("1.2345") - Decimal("0.4") + Decimal("1.3333")


def test_an_agency_funded_sub_account_s_corrections_on_its_invoices_margins_and_a_note_to_its_agency(
        api, live, tenant, make_token):
    """A void and an amend of an agency-funded sub-account's events in a month: its invoice shows its usage
    as charged and the corrections as correction lines at resale, its "billed by the agency" line what is
    left, reconciling with its unmoved ledger; the agency's invoice its price, corrected. A void in the next
    month of an event of the invoiced month: a credit note from LAD to the agency for its price, and a
    prior-period correction line on the sub-account's next invoice. The operator's margins count both."""
    from billing_core.corrections.commands import CorrectionRequest
    from billing_core.corrections.events import correct_usage_event

    engine = engine_for(live.env["DATABASE_URL"])
    _, manage = make_agency(api, make_token, tenant)
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "2"})
    funded = create(api, manage, "fix-billed", funding="agency")
    previous, current = months()
    day = previous.start + timedelta(days=3)
    History(engine, tenant).top_up(day, "20")
    billed = History(engine, funded)
    for hour in (1, 2, 3):  # each: resale 2, the agency's price 1
        billed.charge(day + timedelta(hours=hour), "voice", invoice_items((STT, "10000")))
    voided, amended, late = (c["event"] for c in billed.charges)

    def correct(event_id, action, at=None, items=None):
        command = CorrectionRequest.model_validate({
            "action": action, "reason": "wrong duration", "idempotencyKey": f"c-{uuid.uuid4()}",
            **({"items": items} if items else {})})
        if at is None:
            with UnitOfWork(engine) as uow:
                return correct_usage_event(uow, funded, event_id, command, created_by="test")
        with ledger_dated(at), UnitOfWork(engine) as uow:
            return correct_usage_event(uow, funded, event_id, command, created_by="test")

    correct(voided, "void", day + timedelta(hours=4))  # resale 2 back, the agency's 1
    correct(amended, "amend", day + timedelta(hours=5), invoice_items((STT, "5000")))  # resale 1, the agency's 0.5
    operator = make_token("operator", "billing.admin")
    found = {}
    for who in (funded, tenant):
        rollup = api.post(f"{B}/invoices/rollup?period={previous.label}&tenantId={who}", operator)
        assert rollup.status_code == 200 and rollup.json()["rollup"]["refused"] == [], rollup.text
        [listed] = api.get(f"{B}/invoices?tenantId={who}", operator).json()["invoices"]
        found[who] = api.get(f"{B}/invoices/{listed['id']}?tenantId={who}", operator).json()["invoice"]
    for invoice in found.values():
        r = invoice["reconciliation"]
        assert r["balanced"] and Decimal(r["openingBalance"]) + Decimal(r["credits"]) - Decimal(r["usage"]) == \
            Decimal(r["closingBalance"]), invoice
    theirs = found[funded]  # usage as charged at resale; the corrections; the agency billed what is left
    assert (theirs["totalUsageExact"], theirs["openingBalance"], theirs["closingBalance"]) == ("6", "0", "0")
    assert sorted((c["type"], c["description"], Decimal(c["amount"])) for c in theirs["creditLines"]) == [
        ("adjustment", "usage billed by the agency", Decimal(3)),
        ("correction", "usage corrected down (voice)", Decimal(3))]
    own = found[tenant]  # the agency's: its price for the three events, its corrections of 1 and 0.5
    assert Decimal(own["totalUsageExact"]) == 3 and own["closingBalance"] == "18.5"
    assert sum(Decimal(c["amount"]) for c in own["creditLines"] if c["type"] == "correction") == Decimal("1.5")

    # the month is invoiced at both levels: a void now gives the agency a credit note for its price
    answer = correct(late, "void")
    assert answer.difference == 0 and answer.credit_note_id is None  # the sub-account's wallet paid nothing
    notes = api.get(f"{B}/invoices?type=credit_note&tenantId={tenant}", operator).json()["invoices"]
    [note] = notes
    assert (note["kind"], note["amount"], note["correctsInvoiceId"], note["usageEventId"], note["period"]) == (
        "credit_note", "1", own["id"], str(late), previous.label)
    [line] = note["lines"]
    assert (line["category"], line["provider"], line["amountBefore"], line["amountAfter"], line["quantityAfter"]) == (
        "sub_account", funded, "1", "0", "0")
    assert api.get(f"{B}/invoices?type=credit_note&tenantId={funded}", operator).json()["invoices"] == []
    draft = api.get(f"{B}/invoices/preview?period={current.label}&tenantId={funded}", operator).json()["invoice"]
    r = draft["reconciliation"]
    assert r["balanced"] and (draft["openingBalance"], draft["closingBalance"], draft["totalUsageExact"]) == (
        "0", "0", "0")
    assert sorted((c["type"], c["description"], Decimal(c["amount"])) for c in draft["creditLines"]) == [
        ("adjustment", "usage billed by the agency", Decimal(-2)),
        ("correction", "usage corrected down (voice), prior period", Decimal(2))]

    # the operator's margins: LAD's revenue from the sub-account's events is the agency's price, corrected
    window = f"from={previous.start.isoformat()}&to={current.end.isoformat()}".replace("+00:00", "Z")
    margins = api.get(f"{B}/margins?groupBy=tenant&tenantId={funded}&{window}", operator).json()["margins"]
    [group] = margins["groups"]
    assert Decimal(group["revenue"]) + Decimal(group["uncostedRevenue"]) == Decimal("0.5")  # 3 - 1 - 0.5 - 1
    assert Decimal(group["corrections"]) == Decimal("2.5")
    for who in (tenant, funded):
        assert_ledger_consistent(api, make_token, who)


def test_corrections_of_a_sub_account_event_correct_both_levels(api, tenant, make_token):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "20")
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "2"})
    prepaid, funded = create(api, manage, "fix-prepaid"), create(api, manage, "fix-funded", funding="agency")
    assert api.post(f"{B}/sub-accounts/{prepaid}/topups", manage,
                    json={"amount": "10", "idempotencyKey": "t"}).status_code == 200

    def correct(who, event_id, action, items=None):
        body = {"action": action, "reason": "wrong duration", "idempotencyKey": f"c-{uuid.uuid4()}",
                **({"items": items} if items else {})}
        response = api.post(f"{B}/usage/{event_id}/corrections", make_token(who, "billing.admin"), json=body)
        assert response.status_code == 200, response.text
        return response.json()

    events = {}
    for who in (prepaid, funded):
        for n in range(2):  # each: resale 2, the agency's price 1
            answer = charge(api, make_token(who, "billing.charge"))
            assert answer.status_code == 200, answer.text
            events[who, n] = answer.json()["usageEvent"]["id"]
    assert balance(api, make_token, tenant) == Decimal(16) and balance(api, make_token, prepaid) == Decimal(6)
    for who in (prepaid, funded):
        correct(who, events[who, 0], "void")  # both levels given back: resale 2, the agency's 1
        correct(who, events[who, 1], "amend", stt_items("5000"))  # half: resale 1, the agency's 0.5
    assert balance(api, make_token, prepaid) == Decimal(9)  # 10 - 2 + 2 - 2 + 1
    assert balance(api, make_token, funded) == 0  # billed by the agency: its wallet never moves
    assert balance(api, make_token, tenant) == Decimal(19)  # 20 - 4 + 2 + 1
    margins = api.get(f"{B}/margins?groupBy=subAccount", manage).json()["margins"]
    assert (margins["revenue"], margins["cost"], margins["margin"]) == ("2", "1", "1")
    assert {g["key"]: (g["revenue"], g["cost"]) for g in margins["groups"]} == {
        prepaid: ("1", "0.5"), funded: ("1", "0.5")}
    for who in (tenant, prepaid, funded):
        assert_ledger_consistent(api, make_token, who)


def test_a_rerate_of_sub_accounts_usage_corrects_both_levels(api, tenant, make_token, clock):
    """A catalog price fixed in the past: the re-rate moves a prepaid sub-account at resale, the agency at
    its price, and never an agency-funded sub-account's own (empty) wallet; a second run moves nothing."""
    from tests.e2e.test_corrections import _iso
    from tests.support.pricing import new_item, put_price

    operator = make_token("operator", "billing.admin")
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "20")
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "2"})
    prepaid, funded = create(api, manage, "rr-prepaid"), create(api, manage, "rr-funded", funding="agency")
    assert api.post(f"{B}/sub-accounts/{prepaid}/topups", manage,
                    json={"amount": "10", "idempotencyKey": "t"}).status_code == 200
    item = new_item()
    start = put_price(api, operator, item, unitPrice="0.02")["effectiveFrom"]  # a digit too many
    for who in (prepaid, funded):  # each: the agency's price 2, resale 4
        answer = api.post(f"{B}/charge?wait=20", make_token(who, "billing.charge"), json={
            "featureKey": "f", "idempotencyKey": f"c-{uuid.uuid4()}", "items": [{**item, "quantity": "100"}]})
        assert answer.status_code == 200 and answer.json()["usageEvent"]["totalCost"] == "4", answer.text
    assert (balance(api, make_token, tenant), balance(api, make_token, prepaid)) == (Decimal(16), Decimal(6))
    clock.advance(3600)
    fixed = api.request("PUT", f"{B}/pricing", operator, json={**item, "unitPrice": "0.01", "effectiveFrom": start,
                                                               "correctionReason": "a digit too many"})
    assert fixed.status_code == 200, fixed.text

    def rerate():
        body = {"from": start, "to": _iso(timedelta(days=1)), "model": item["model"], "dryRun": False,
                "idempotencyKey": f"rr-{uuid.uuid4()}"}
        started = api.post(f"{B}/rerates", operator, json=body)
        assert started.status_code == 202, started.text
        done = eventually(lambda: api.get(f"{B}/rerates/{started.json()['rerate']['id']}", operator).json()["rerate"],
                          until=lambda r: r["status"] != "running", what="the re-rate")
        assert done["status"] == "completed", done
        return {t["tenantId"]: Decimal(t["difference"]) for t in done["tenants"]}

    assert rerate() == {prepaid: Decimal(2), funded: Decimal(2)}  # at resale: 4 → 2 each
    assert balance(api, make_token, prepaid) == Decimal(8)  # given back at resale
    assert balance(api, make_token, funded) == 0  # billed by the agency: its wallet never moves
    assert balance(api, make_token, tenant) == Decimal(18)  # 2 → 1 for each event, at the agency's price
    margins = api.get(f"{B}/margins?groupBy=subAccount", manage).json()["margins"]
    assert (margins["revenue"], margins["cost"], margins["margin"]) == ("4", "2", "2")
    assert {g["key"]: (g["revenue"], g["cost"]) for g in margins["groups"]} == {
        prepaid: ("2", "1"), funded: ("2", "1")}
    for who in (prepaid, funded):  # the operator's: LAD's revenue is the agency's price, 2 re-rated to 1
        ops = api.get(f"{B}/margins?groupBy=tenant&tenantId={who}", operator).json()["margins"]
        [group] = ops["groups"]
        assert Decimal(group["revenue"]) + Decimal(group["uncostedRevenue"]) == 1, ops
        assert Decimal(group["corrections"]) == 1, ops
    rerate()  # the same catalog again: nothing moves at either level
    assert (balance(api, make_token, tenant), balance(api, make_token, prepaid)) == (Decimal(18), Decimal(8))
    assert balance(api, make_token, funded) == 0
    # the agency-funded sub-account's draft shows the re-rate as a correction line at resale, the agency
    # billing it that much less, and reconciles with its unmoved ledger
    draft = api.get(f"{B}/invoices/preview?tenantId={funded}", operator).json()["invoice"]
    assert draft["reconciliation"]["balanced"] and draft["totalUsageExact"] == "4", draft
    assert (draft["openingBalance"], draft["closingBalance"]) == ("0", "0")
    assert sorted((c["type"], c["description"], Decimal(c["amount"])) for c in draft["creditLines"]) == [
        ("adjustment", "usage billed by the agency", Decimal(2)), ("correction", "usage corrected down (f)", Decimal(2))]
    for who in (tenant, prepaid, funded):
        assert_ledger_consistent(api, make_token, who)


def test_a_rerate_of_an_invoiced_month_gives_the_agency_a_note(api, live, tenant, make_token):
    """A price fixed back to the start of an invoiced month: the re-rate of an agency-funded sub-account's
    event of that month gives the agency LAD's credit note for its price; the sub-account none."""
    from tests.e2e.test_corrections import _iso
    from tests.support.pricing import new_item

    engine = engine_for(live.env["DATABASE_URL"])
    operator = make_token("operator", "billing.admin")
    _, manage = make_agency(api, make_token, tenant)
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "2"})
    funded = create(api, manage, "rr-invoiced", funding="agency")
    previous, _ = months()
    item = new_item()
    start = previous.start.isoformat().replace("+00:00", "Z")
    wrong = api.request("PUT", f"{B}/pricing", operator, json={**item, "unitPrice": "0.02", "effectiveFrom": start,
                                                               "correctionReason": "a new item"})
    assert wrong.status_code == 200, wrong.text
    day = previous.start + timedelta(days=3)
    History(engine, tenant).top_up(day, "20")
    billed = History(engine, funded)
    billed.charge(day + timedelta(hours=1), "f", [{**item, "quantity": "100"}])  # the agency's 2, resale 4
    [event] = [c["event"] for c in billed.charges]
    rollup = api.post(f"{B}/invoices/rollup?period={previous.label}&tenantId={tenant}", operator)
    assert rollup.status_code == 200 and rollup.json()["rollup"]["refused"] == [], rollup.text
    [invoice] = api.get(f"{B}/invoices?tenantId={tenant}", operator).json()["invoices"]
    fixed = api.request("PUT", f"{B}/pricing", operator, json={**item, "unitPrice": "0.01", "effectiveFrom": start,
                                                               "correctionReason": "a digit too many"})
    assert fixed.status_code == 200, fixed.text
    started = api.post(f"{B}/rerates", operator, json={
        "from": start, "to": _iso(timedelta(days=1)), "model": item["model"], "dryRun": False,
        "idempotencyKey": f"rr-{uuid.uuid4()}"})
    assert started.status_code == 202, started.text
    done = eventually(lambda: api.get(f"{B}/rerates/{started.json()['rerate']['id']}", operator).json()["rerate"],
                      until=lambda r: r["status"] != "running", what="the re-rate")
    assert done["status"] == "completed", done
    [note] = api.get(f"{B}/invoices?type=credit_note&tenantId={tenant}", operator).json()["invoices"]
    assert (note["kind"], note["amount"], note["correctsInvoiceId"], note["usageEventId"]) == (
        "credit_note", "1", invoice["id"], str(event))
    assert api.get(f"{B}/invoices?type=credit_note&tenantId={funded}", operator).json()["invoices"] == []
    for who in (tenant, funded):
        assert_ledger_consistent(api, make_token, who)


def test_usage_billed_through_an_agency_is_corrected_not_refunded(api, tenant, make_token):
    """An agency-funded sub-account's zero debit, and the agency's debit for a sub-account's event, are
    refused by POST /refunds with their own code, nothing moving; a void corrects both levels."""
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "2"})
    funded = create(api, manage, "no-refund", funding="agency")
    event_id = charge(api, make_token(funded, "billing.charge")).json()["usageEvent"]["id"]  # resale 2, agency 1
    sub_admin = make_token(funded, "billing.admin")
    [zero] = api.get(f"{B}/transactions?type=debit", sub_admin).json()["transactions"]
    [agency_debit] = api.get(f"{B}/transactions?type=debit", admin).json()["transactions"]
    for token, debit in ((sub_admin, zero), (admin, agency_debit)):
        refused = api.post(f"{B}/refunds", token, json={"transactionId": debit["id"], "reason": "bad call",
                                                          "idempotencyKey": f"r-{uuid.uuid4()}"})
        assert refused.status_code == 409, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["details"]["field"], error["details"]["usageEventId"]) == (
            "refund_billed_by_agency", "transactionId", event_id)
    assert (balance(api, make_token, tenant), balance(api, make_token, funded)) == (Decimal(9), 0)
    voided = api.post(f"{B}/usage/{event_id}/corrections", sub_admin,
                      json={"action": "void", "reason": "bad call", "idempotencyKey": "v"})
    assert voided.status_code == 200, voided.text
    assert (balance(api, make_token, tenant), balance(api, make_token, funded)) == (Decimal(10), 0)
    margins = api.get(f"{B}/margins?groupBy=subAccount", manage).json()["margins"]
    assert (margins["revenue"], margins["cost"]) == ("0", "0")
    for who in (tenant, funded):
        assert_ledger_consistent(api, make_token, who)


def test_twenty_sub_accounts_and_their_agency_charging_through_two_worker_processes(live, tenant, make_token, engine):
    api = live.api
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "1000")
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "1.37"})
    subs = [create(api, manage, f"w{i}", funding="prepaid" if i % 2 else "agency") for i in range(20)]
    for sub in subs[1::2]:
        assert api.post(f"{B}/sub-accounts/{sub}/topups", manage,
                        json={"amount": "100", "idempotencyKey": "t"}).status_code == 200
    tokens = {t: make_token(t, "billing.charge") for t in [*subs, tenant]}
    jobs = [(sub, i) for i in range(6) for sub in subs] + [(tenant, i) for i in range(30)]
    second = live.stack.start_worker(log=live.logs / "agency-racer.log", concurrency=2, name="agency-racer")
    clients = [Api(api.base_url) for _ in range(16)]
    try:
        def send(n: int) -> None:
            who, i = jobs[n]
            response = clients[n % 16].post(f"{B}/charge?wait=0", tokens[who], json={
                "featureKey": "voice", "items": stt_items(str(1000 + 7 * i)), "idempotencyKey": f"k{i}"})
            assert response.status_code == 202, response.text

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(send, range(len(jobs))))

        def settled() -> bool:
            with engine.connect() as connection:
                return connection.execute(text(
                    "SELECT count(*) FROM usage_events WHERE tenant_id = ANY(:t) AND status = 'pending'"),
                    {"t": [*subs, tenant]}).scalar_one() == 0

        eventually(settled, 120, what="every charge settled")
    finally:
        live.stack.stop_process("agency-racer")
    assert second.poll() is not None
    with engine.connect() as connection:
        statuses = connection.execute(text(
            "SELECT status, count(*) FROM usage_events WHERE tenant_id = ANY(:t) GROUP BY 1"),
            {"t": [*subs, tenant]}).all()
        assert statuses == [("charged", len(jobs))]
        # every sub-account event: one debit on its own ledger, one on the agency's, one pair recorded
        per_event = connection.execute(text("""
            SELECT e.id, e.total_cost,
                   (SELECT count(*) FROM ledger_entries l WHERE l.tenant_id = e.tenant_id
                      AND l.usage_event_id = e.id AND l.entry_type = 'debit') AS own,
                   (SELECT count(*) FROM ledger_entries l WHERE l.tenant_id = :agency
                      AND l.sub_account_event_id = e.id AND l.entry_type = 'debit') AS agency,
                   (SELECT a.resale_amount FROM agency_charges a WHERE a.tenant_id = :agency
                      AND a.usage_event_id = e.id) AS resale,
                   (SELECT a.agency_amount FROM agency_charges a WHERE a.tenant_id = :agency
                      AND a.usage_event_id = e.id) AS agency_price
            FROM usage_events e WHERE e.tenant_id = ANY(:t)"""), {"t": subs, "agency": tenant}).all()
    assert len(per_event) == 6 * 20
    assert {(r.own, r.agency) for r in per_event} == {(1, 1)}
    assert all(r.resale == r.total_cost for r in per_event)
    one = Decimal("0.0001")  # per second
    agency_prices = sum((r.agency_price for r in per_event), Decimal(0))
    assert agency_prices == sum((one * (1000 + 7 * i) for i in range(6)), Decimal(0)) * 20
    resale = sum((r.resale for r in per_event), Decimal(0))
    assert resale == agency_prices * Decimal("1.37")
    own = sum((one * (1000 + 7 * i) for i in range(30)), Decimal(0))
    assert balance(api, make_token, tenant) == Decimal(1000) - own - agency_prices
    for who in (tenant, *subs):
        assert_ledger_consistent(api, make_token, who)
    margins = api.get(f"{B}/margins?groupBy=subAccount", manage).json()["margins"]
    assert Decimal(margins["revenue"]) == resale and Decimal(margins["cost"]) == agency_prices
    assert Decimal(margins["margin"]) == resale - agency_prices


def test_budgets_at_both_levels(api, tenant, make_token):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "2"})
    sub = create(api, manage, "budgeted", funding="agency")
    other = create(api, manage, "unbudgeted", funding="agency")
    # the sub-account's own budget counts its usage at resale prices (2 a charge), agency funding too
    budget = {"limit": "3", "period": "month", "action": "reject"}
    assert api.request("PUT", f"{B}/budgets/voice", make_token(sub, "billing.admin"), json=budget).status_code == 200
    # the agency's budget counts its own usage and its sub-accounts' at its price (1 a charge)
    assert api.request("PUT", f"{B}/budgets/voice", admin, json={**budget, "limit": "2.5"}).status_code == 200
    token = make_token(sub, "billing.charge")
    assert charge(api, token).status_code == 200  # the sub-account's 2, the agency's 1
    refused = charge(api, token)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "budget_exceeded", refused.text
    assert refused.json()["error"]["details"]["featureKey"] == "voice"
    mine = make_token(tenant, "billing.charge")
    assert charge(api, mine).status_code == 200  # the agency's 2
    # another sub-account's charge would take the agency's budget to 3: refused at the agency's level,
    # with no number of the agency's in what the sub-account sees
    refused = charge(api, make_token(other, "billing.charge"))
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "budget_exceeded", refused.text
    details = refused.json()["error"]["details"]
    assert (details["featureKey"], details["level"]) == ("voice", "agency")
    assert not {"limit", "used", "requested"} & set(details)
    refused = charge(api, mine)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "budget_exceeded", refused.text
    assert balance(api, make_token, tenant) == Decimal(8)  # one charge of the sub-account, one of its own

    def agency_budget():
        [found] = api.get(f"{B}/budgets", admin).json()["budgets"]
        return found["spent"], found["held"]

    assert agency_budget() == ("2", "0")
    # changing the budget recounts the period from what was charged: both kinds of usage
    assert api.request("PUT", f"{B}/budgets/voice", admin, json={**budget, "limit": "3.5"}).status_code == 200
    assert agency_budget() == ("2", "0")
    # an agency-funded sub-account's hold is checked against the agency's budget at its price too
    other_token = make_token(other, "billing.charge")
    too_much = hold(api, other_token, featureKey="voice", items=stt_items("20000"))  # the agency's 2
    assert too_much.status_code == 402, too_much.text
    assert too_much.json()["error"]["details"] == {"featureKey": "voice", "level": "agency"}
    fits = hold(api, other_token, featureKey="voice", items=stt_items("10000"))
    assert fits.status_code == 200, fits.text
    assert agency_budget() == ("2", "1")
    # a refund of the sub-account's charge gives the agency's budget back its price
    [debit] = api.get(f"{B}/transactions?type=debit", make_token(sub, "billing.admin")).json()["transactions"]
    event_id = debit["usageEventId"]
    voided = api.post(f"{B}/usage/{event_id}/corrections", make_token(sub, "billing.admin"),
                      json={"action": "void", "reason": "test", "idempotencyKey": "v"})
    assert voided.status_code == 200, voided.text
    assert agency_budget() == ("1", "1")


def test_low_balance_alerts_at_both_levels_from_a_sub_account_charge(api, tenant, make_token, engine):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "6")
    sub = create(api, manage, "alerted")
    assert api.post(f"{B}/sub-accounts/{sub}/topups", manage,
                    json={"amount": "4", "idempotencyKey": "t"}).status_code == 200
    for who, threshold in ((tenant, "5.5"), (sub, "3.5")):
        response = api.request("PUT", f"{B}/settings/alerts", make_token(who, "billing.admin"),
                               json={"thresholds": [threshold], "webhookUrl": "https://127.0.0.1:9/lad"})
        assert response.status_code == 200, response.text
    assert charge(api, make_token(sub, "billing.charge")).status_code == 200  # 1 each: 6 → 5, 4 → 3

    def fired() -> bool:  # by the charging path (no beat scan runs in these tests)
        with engine.connect() as connection:
            return connection.execute(text(
                "SELECT count(*) FROM alert_states WHERE tenant_id = ANY(:t) AND fired_count > 0"),
                {"t": [tenant, sub]}).scalar_one() == 2

    eventually(fired, 30, what="both levels' alerts fired")


def test_auto_top_up_at_both_levels_from_a_sub_account_charge(api, tenant, make_token, stripe_client):
    from tests.support.auto_topup import own_card, put_rule, wait_finished

    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "12")
    sub = create(api, manage, "topped")
    sub_admin = make_token(sub, "billing.admin")
    assert api.post(f"{B}/sub-accounts/{sub}/topups", manage,
                    json={"amount": "12", "idempotencyKey": "t"}).status_code == 200
    for token in (admin, sub_admin):
        assert put_rule(api, token, own_card(api, token, stripe_client)).status_code == 200  # at 10, to 50
    assert charge(api, make_token(sub, "billing.charge"), "50000").status_code == 200  # 5 each: 12 → 7
    for who, token in ((tenant, admin), (sub, sub_admin)):
        [attempt] = wait_finished(api, token, who)
        assert (attempt["status"], attempt["amount"]) == ("succeeded", "43"), attempt
        assert balance(api, make_token, who) == Decimal(50)
