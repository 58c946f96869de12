"""Agencies and sub-accounts, the money side (issue 21) on the real stack: an agency-funded
sub-account's holds are backed by its agency's wallet; refunds and corrections of a sub-account's
event move both levels; both levels' monthly invoices reconcile; many sub-accounts charge at once
through two worker processes; budgets, alerts and auto top-up at both levels."""
from __future__ import annotations

import uuid
from decimal import Decimal

from tests.e2e.test_agencies import B, balance, charge, create, entries, make_agency
from tests.support.helpers import assert_ledger_consistent, stt_items, top_up, wallet


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
    refund()  # the rest: the rest of the agency's price, exactly
    assert balance(api, make_token, sub) == Decimal("5") and balance(api, make_token, tenant) == Decimal("10")
    margins = api.get(f"{B}/margins?groupBy=subAccount", manage).json()["margins"]
    assert (margins["revenue"], margins["cost"], margins["margin"]) == ("0", "0", "0")
    for who in (tenant, sub):
        assert_ledger_consistent(api, make_token, who)
