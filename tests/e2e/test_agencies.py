"""Agencies and sub-accounts (issue 21) on the real stack: one charge of a sub-account moves the
sub-account's wallet at the resale price and the agency's at its own price in one transaction,
exactly once; refusals move neither; agency funding and its spend cap; isolation between levels;
the agency's margins per sub-account; many sub-accounts charging at once through the workers."""
from __future__ import annotations

import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

from pypdf import PdfReader
from sqlalchemy import text

from billing_core.db import UnitOfWork, engine_for
from billing_core.ledger import credits
from billing_core.ledger.commands import TopUpRequest
from tests.support.helpers import assert_ledger_consistent, stt_items, top_up, wallet
from tests.support.invoices import STT, History, ledger_dated, months
from tests.support.invoices import items as invoice_items
from tests.support.pricing import TIERS, new_item, put_price

B = "/api/billing"


def make_agency(api, make_token, agency):
    admin = make_token(agency, "billing.admin")
    response = api.request("PATCH", f"{B}/wallet", admin, json={"reseller": True})
    assert response.status_code == 200, response.text
    return admin, make_token(agency, "billing.manage")


def create(api, manage, name, funding="prepaid", **extra):
    response = api.post(f"{B}/sub-accounts", manage, json={"name": name, "funding": funding, **extra})
    assert response.status_code == 201, response.text
    return response.json()["subAccount"]["tenantId"]


def charge(api, token, seconds="10000", key=None):
    return api.post(f"{B}/charge", token, json={"featureKey": "voice", "items": stt_items(seconds),
                                                "idempotencyKey": key or f"c-{uuid.uuid4()}"})


def balance(api, make_token, tenant):
    return Decimal(wallet(api, make_token(tenant, "billing.view"))["currentBalance"])


def entries(engine, tenant):
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT coalesce(usage_event_id, sub_account_event_id), amount FROM ledger_entries "
            "WHERE tenant_id = :t AND entry_type = 'debit'"), {"t": tenant}).all()


def test_a_prepaid_sub_account_charge_moves_both_wallets_once(api, tenant, make_token, engine):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    sub = create(api, manage, "acme")
    assert sub == f"{tenant}:acme"
    price = api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "1.5", "category": "stt"})
    assert price.status_code == 200, price.text
    topped = api.post(f"{B}/sub-accounts/{sub}/topups", manage, json={"amount": "5", "idempotencyKey": "t1"})
    assert topped.status_code == 200, topped.text

    sub_token = make_token(sub, "billing.charge", "billing.view")
    first = charge(api, sub_token, key="once")
    assert first.status_code == 200, first.text
    assert first.json()["usageEvent"]["totalCost"] == "1.5"  # the resale price: 1 × 1.5
    again = charge(api, sub_token, key="once")
    assert again.json()["usageEvent"]["id"] == first.json()["usageEvent"]["id"]

    assert balance(api, make_token, sub) == Decimal("3.5")
    assert balance(api, make_token, tenant) == Decimal("9")  # the agency's price: 1
    event_id = first.json()["usageEvent"]["id"]
    assert [(str(e), a) for e, a in entries(engine, sub)] == [(event_id, Decimal("-1.5"))]
    assert [(str(e), a) for e, a in entries(engine, tenant)] == [(event_id, Decimal("-1"))]
    assert_ledger_consistent(api, make_token, sub)
    assert_ledger_consistent(api, make_token, tenant)

    # nobody sees the level above: no agency price and no provider cost in the sub-account's view
    shown = api.get(f"{B}/usage/{event_id}", sub_token).text
    assert '"1"' not in shown.replace('"1.5"', "") and "providerCost\": \"" not in shown

    as_agency = api.get(f"{B}/usage/{event_id}?tenantId={sub}", manage).json()["usageEvent"]
    assert (as_agency["totalCost"], as_agency["agencyCost"]) == ("1.5", "1")
    assert "agencyCost" not in api.get(f"{B}/usage/{event_id}", sub_token).json()["usageEvent"]

    margins = api.get(f"{B}/margins?groupBy=subAccount", manage)
    assert margins.status_code == 200, margins.text
    body = margins.json()["margins"]
    assert (body["revenue"], body["cost"], body["margin"]) == ("1.5", "1", "0.5")
    assert [g["key"] for g in body["groups"]] == [sub]
    # the price book's preview: the last 30 days at a proposed row, nothing changed
    preview = api.post(f"{B}/sub-accounts/prices/preview", manage, json={"multiplier": "2", "category": "stt"})
    assert preview.status_code == 200, preview.text
    shown = preview.json()["preview"]
    assert (shown["current"], shown["proposed"], shown["agencyCost"], shown["items"]) == ("1.5", "2", "1", 1)
    assert api.get(f"{B}/sub-accounts/prices", manage).json()["prices"][0]["multiplier"] == "1.5"
    # the operator sees what LAD charged (the agency price) against the provider's cost, not the resale
    operator = api.get(f"{B}/margins?tenantId={sub}", make_token("operator", "billing.admin")).json()["margins"]
    assert Decimal(operator["revenue"]) + Decimal(operator["uncosted"]["revenue"]) == Decimal(1)


def test_an_empty_agency_wallet_refuses_and_neither_wallet_moves(api, tenant, make_token, engine):
    _, manage = make_agency(api, make_token, tenant)
    sub = create(api, manage, "broke")
    assert api.post(f"{B}/sub-accounts/{sub}/topups", manage,
                    json={"amount": "5", "idempotencyKey": "t1"}).status_code == 200
    refused = charge(api, make_token(sub, "billing.charge"))
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["code"] == "insufficient_balance"
    assert refused.json()["error"]["details"]["wallet"] == "agency"
    assert balance(api, make_token, sub) == Decimal("5")
    assert entries(engine, sub) == [] and entries(engine, tenant) == []


def test_a_short_sub_account_wallet_is_named(api, tenant, make_token):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    sub = create(api, manage, "short")
    refused = charge(api, make_token(sub, "billing.charge"))
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["details"]["wallet"] == "sub_account"
    assert balance(api, make_token, tenant) == Decimal("10")


def test_agency_funding_debits_only_the_agency_and_honours_the_spend_cap(api, tenant, make_token, engine):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    sub = create(api, manage, "funded", funding="agency", spendCap="2.5")
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "2"})
    token = make_token(sub, "billing.charge")
    first = charge(api, token)
    assert first.status_code == 200, first.text
    assert first.json()["usageEvent"]["totalCost"] == "2"
    refused = charge(api, token)
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.json()["error"]["details"]["spendCap"] == "2.5"
    assert [a for _, a in entries(engine, sub)] == [Decimal(0)]  # the event's one debit, at nothing
    assert balance(api, make_token, tenant) == Decimal("9")


def test_isolation_between_levels(api, tenant, make_token):
    _, manage = make_agency(api, make_token, tenant)
    a, b = create(api, manage, "a"), create(api, manage, "b")
    other = f"o-{uuid.uuid4().hex[:10]}"
    _, other_manage = make_agency(api, make_token, other)
    theirs = create(api, other_manage, "x")
    view_a = make_token(a, "billing.manage")
    # a sub-account cannot read its agency or a sibling
    for named in (tenant, b):
        assert api.get(f"{B}/wallet?tenantId={named}", view_a).status_code == 404
    # an agency reads its own sub-accounts, and nothing else
    assert api.get(f"{B}/wallet?tenantId={a}", manage).status_code == 200
    assert api.get(f"{B}/wallet?tenantId={theirs}", manage).status_code == 404
    assert api.get(f"{B}/sub-accounts/{theirs}", manage).status_code == 404
    assert api.get(f"{B}/wallet?tenantId=t-{uuid.uuid4().hex[:8]}", manage).status_code == 404
    assert api.get(f"{B}/sub-accounts", view_a).status_code == 404  # a sub-account has no tree
    # no claiming a tenant with history; no id outside the namespace
    assert api.post(f"{B}/sub-accounts", manage, json={"name": "a", "funding": "prepaid"}).status_code == 409
    bad = api.post(f"{B}/sub-accounts", manage, json={"name": f"{other}:x", "funding": "prepaid"})
    assert bad.status_code == 400, bad.text
    listed = api.get(f"{B}/sub-accounts", manage).json()["subAccounts"]
    assert [s["tenantId"] for s in listed] == sorted([a, b])


def test_twenty_sub_accounts_charging_at_once_with_the_agency(api, tenant, make_token):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "1000")
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "1.3"})
    subs = [create(api, manage, f"s{i}") for i in range(20)]
    for sub in subs:
        assert api.post(f"{B}/sub-accounts/{sub}/topups", manage,
                        json={"amount": "100", "idempotencyKey": "t"}).status_code == 200
    jobs = [(sub, i) for sub in subs for i in range(5)] + [(tenant, i) for i in range(20)]
    tokens = {t: make_token(t, "billing.charge") for t in [*subs, tenant]}

    def run(job):
        who, i = job
        return charge(api, tokens[who], "1234", key=f"k{i}")

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(run, jobs))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:3]
    one = Decimal("0.1234")
    for sub in subs:
        assert balance(api, make_token, sub) == Decimal(100) - 5 * one * Decimal("1.3")
        assert_ledger_consistent(api, make_token, sub)
    assert balance(api, make_token, tenant) == Decimal(1000) - 20 * 5 * one - 20 * one
    assert_ledger_consistent(api, make_token, tenant)
    body = api.get(f"{B}/margins?groupBy=subAccount", manage).json()["margins"]
    assert Decimal(body["revenue"]) == 100 * one * Decimal("1.3")
    assert Decimal(body["margin"]) == Decimal(body["revenue"]) - Decimal(body["cost"]) == 100 * one * Decimal("0.3")


def test_the_sub_account_invoice_is_issued_by_its_agency(api, live, tenant, make_token):
    engine = engine_for(live.env["DATABASE_URL"])
    _, manage = make_agency(api, make_token, tenant)
    agency_details = {"legalName": "Acme Voice Agency Ltd", "address": "1 Agency Road, Leeds", "taxId": "GB123456789"}
    assert api.request("PUT", f"{B}/settings/billing-details", manage, json=agency_details).status_code == 200
    sub = create(api, manage, "client")
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "1.25"})
    previous, _ = months()
    day = previous.start + timedelta(days=2)
    History(engine, tenant).top_up(day, "10")
    client = History(engine, sub)
    with ledger_dated(day + timedelta(hours=1)), UnitOfWork(engine) as uow:
        credits.top_up(uow, sub, TopUpRequest(amount=Decimal(5), idempotencyKey="from-client"), created_by="test",
                       receipt=False)
    client.charge(day + timedelta(hours=2), "voice", invoice_items((STT, "10000")))

    operator = make_token("operator", "billing.admin")
    rollup = api.post(f"{B}/invoices/rollup?period={previous.label}&tenantId={sub}", operator)
    assert rollup.status_code == 200, rollup.text
    listed = api.get(f"{B}/invoices?tenantId={sub}", manage)
    assert listed.status_code == 200, listed.text
    [invoice] = listed.json()["invoices"]
    assert invoice["issuer"]["legalName"] == "Acme Voice Agency Ltd"
    assert invoice["issuer"]["taxId"] == "GB123456789"
    assert invoice["number"].startswith(f"{tenant}-")
    as_pdf = api.get(f"{B}/invoices/{invoice['id']}.pdf", make_token(sub, "billing.view"))
    assert as_pdf.status_code == 200
    pdf_text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(as_pdf.content)).pages)
    assert "Acme Voice Agency Ltd" in pdf_text and "LAD" not in pdf_text
    assert "1.25" in pdf_text  # the resale price, 1 × 1.25
    assert invoice["totalUsage"] == "1.25"

    # the agency's own statement from LAD lists the sub-account's usage at the agency's price, and reconciles
    rollup = api.post(f"{B}/invoices/rollup?period={previous.label}&tenantId={tenant}", operator)
    assert rollup.status_code == 200, rollup.text
    assert rollup.json()["rollup"]["refused"] == []
    [listed_mine] = api.get(f"{B}/invoices", manage).json()["invoices"]
    mine = api.get(f"{B}/invoices/{listed_mine['id']}", manage).json()["invoice"]
    assert mine["issuer"]["legalName"] != "Acme Voice Agency Ltd" and not mine["number"].startswith(f"{tenant}-")
    assert [(line["category"], line["provider"], line["amount"]) for line in mine["lines"]] == [
        ("sub_account", sub, "1")]


def test_an_agency_client_acts_for_its_sub_accounts(api, live, tenant, make_token):
    from lad_billing import BillingClient, NotFound

    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    sub = create(api, manage, "viaclient")
    assert api.post(f"{B}/sub-accounts/{sub}/topups", manage,
                    json={"amount": "2", "idempotencyKey": "t"}).status_code == 200
    event_id = charge(api, make_token(sub, "billing.charge")).json()["usageEvent"]["id"]
    with BillingClient(live.api.base_url, token=manage, tenant_id=sub) as client:
        assert client.wallet().current_balance == Decimal(1)
        detail = client.usage_event(event_id)
        assert detail.total_cost == Decimal(1) and detail.raw["agencyCost"] == "1"
    other = f"o-{uuid.uuid4().hex[:10]}"
    with BillingClient(live.api.base_url, token=manage, tenant_id=other) as client:
        try:
            client.wallet()
            raise AssertionError("an agency read a tenant that is not its own")
        except NotFound:
            pass


def test_graduated_agency_prices_advance_on_the_agency_position_and_resale_models_scale(api, tenant, make_token):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "100")
    graduated, package = new_item(), new_item("pkg")
    operator = make_token("operator", "billing.admin")
    put_price(api, operator, graduated, tenantId=tenant, pricingModel="graduated", tiers=TIERS)
    put_price(api, operator, package, tenantId=tenant, pricingModel="package", packageSize="100", packagePrice="0.5")
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "2", "category": graduated["category"]})
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "1.5", "category": package["category"]})
    sub = create(api, manage, "tiers")
    api.post(f"{B}/sub-accounts/{sub}/topups", manage, json={"amount": "50", "idempotencyKey": "t"})

    def use(token, item, quantity):
        response = api.post(f"{B}/charge?wait=20", token, json={
            "featureKey": "f", "idempotencyKey": f"c-{uuid.uuid4()}", "items": [{**item, "quantity": quantity}]})
        assert response.status_code == 200, response.text
        return response.json()["usageEvent"]

    agency_charge = make_token(tenant, "billing.charge")
    sub_charge = make_token(sub, "billing.charge", "billing.view")
    assert use(agency_charge, graduated, "800")["totalCost"] == "8"  # the agency's own: 800 at 0.01
    # the sub-account's 400: resale from its own month (400 at 0.02); the agency's price from the agency's
    # month, which its own 800 moved: 200 at 0.01 + 200 at 0.005 = 3
    event = use(sub_charge, graduated, "400")
    assert event["totalCost"] == "8"
    assert api.get(f"{B}/usage/{event['id']}?tenantId={sub}", manage).json()["usageEvent"]["agencyCost"] == "3"
    # package: 250 units are 3 packages of 100 at 0.5 for the agency, at 0.75 resold
    event = use(sub_charge, package, "250")
    assert event["totalCost"] == "2.25"
    assert api.get(f"{B}/usage/{event['id']}?tenantId={sub}", manage).json()["usageEvent"]["agencyCost"] == "1.5"
    assert balance(api, make_token, tenant) == Decimal(100) - 8 - 3 - Decimal("1.5")
    assert balance(api, make_token, sub) == Decimal(50) - 8 - Decimal("2.25")
    margins = api.get(f"{B}/margins?groupBy=subAccount", manage).json()["margins"]
    assert (margins["revenue"], margins["cost"], margins["margin"]) == ("10.25", "4.5", "5.75")
    # the sub-account's price list shows the resale price, never the agency's
    listed = api.get(f"{B}/pricing?category={package['category']}", sub_charge).text
    assert "0.75" in listed and '"0.5"' not in listed


def test_sub_accounts_calls_count_toward_the_agency_s_limit(api, tenant, make_token):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    assert api.request("PATCH", f"{B}/wallet", admin, json={"maxConcurrentCalls": 2}).status_code == 200
    a, b = create(api, manage, "call-a"), create(api, manage, "call-b")
    for sub in (a, b):
        api.post(f"{B}/sub-accounts/{sub}/topups", manage, json={"amount": "5", "idempotencyKey": "t"})

    def hold(who):
        return api.post(f"{B}/reservations", make_token(who, "billing.charge"), json={
            "featureKey": "call", "amount": "0.1", "idempotencyKey": f"h-{uuid.uuid4()}"})

    assert hold(a).status_code == 200 and hold(b).status_code == 200
    for who in (a, b, tenant):  # the tree's two slots are taken, whoever asks
        refused = hold(who)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["details"]["level"] == "agency"


def test_explicit_resale_rows_win_over_multipliers(api, tenant, make_token):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "100")
    item = new_item()
    put_price(api, make_token("operator", "billing.admin"), item, unitPrice="0.01")  # global: the agency's price
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "3"})
    one, other = create(api, manage, "rows-1"), create(api, manage, "rows-2")
    for sub in (one, other):
        api.post(f"{B}/sub-accounts/{sub}/topups", manage, json={"amount": "50", "idempotencyKey": "t"})
    every = api.request("PUT", f"{B}/sub-accounts/prices/rows", manage,
                        json={**item, "pricingModel": "graduated", "tiers": TIERS})
    assert every.status_code == 200, every.text
    own = api.request("PUT", f"{B}/sub-accounts/prices/rows", manage,
                      json={**item, "unitPrice": "0.02", "subAccountId": one})
    assert own.status_code == 200, own.text
    theirs = api.request("PUT", f"{B}/sub-accounts/prices/rows", manage,
                         json={**item, "unitPrice": "0.02", "subAccountId": f"o-{uuid.uuid4().hex[:6]}:x"})
    assert theirs.status_code == 404

    def cost(sub, quantity):
        response = api.post(f"{B}/charge?wait=20", make_token(sub, "billing.charge"), json={
            "featureKey": "f", "idempotencyKey": f"c-{uuid.uuid4()}", "items": [{**item, "quantity": quantity}]})
        assert response.status_code == 200, response.text
        return response.json()["usageEvent"]["totalCost"]

    assert cost(one, "100") == "2"  # its own row: 100 × 0.02
    assert cost(other, "1200") == "11"  # every sub-account's row: 1000 × 0.01 + 200 × 0.005
    assert balance(api, make_token, tenant) == Decimal(100) - 13 * Decimal("0.01") * 100


def attach(api, token, agency, tenant_id, funding="prepaid", **extra):
    return api.post(f"{B}/agencies/{agency}/sub-accounts", token,
                    json={"tenantId": tenant_id, "funding": funding, **extra})


def test_the_operator_attaches_an_existing_tenant(api, tenant, make_token, engine):
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    operator = make_token("operator", "billing.admin")
    # a tenant in the agency's namespace with history: the agency cannot claim it, the operator can
    old = f"{tenant}:old"
    top_up(api, make_token(old, "billing.admin"), "3")
    old_charge = charge(api, make_token(old, "billing.charge"))
    assert old_charge.status_code == 200 and old_charge.json()["usageEvent"]["totalCost"] == "1"
    claimed = api.post(f"{B}/sub-accounts", manage, json={"name": "old", "funding": "prepaid"})
    assert claimed.status_code == 409 and claimed.json()["error"]["code"] == "sub_account_exists"
    # agency tokens never attach, whatever they name
    assert attach(api, manage, tenant, old).status_code == 403
    # with a balance it cannot be agency-funded (it has no balance of its own then)
    refused = attach(api, operator, tenant, old, funding="agency")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "sub_account_has_balance"
    assert refused.json()["error"]["details"]["balance"] == "2"
    done = attach(api, operator, tenant, old, spendCap="50")
    assert done.status_code == 201, done.text
    assert done.json()["subAccount"] == {**done.json()["subAccount"], "tenantId": old, "funding": "prepaid",
                                         "spendCap": "50"}
    assert [s["tenantId"] for s in api.get(f"{B}/sub-accounts", manage).json()["subAccounts"]] == [old]
    # its balance stays its own; from now on it is charged at resale prices, and the agency at its own
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "1.5"})
    now = charge(api, make_token(old, "billing.charge"))
    assert now.status_code == 200, now.text
    assert now.json()["usageEvent"]["totalCost"] == "1.5"
    assert balance(api, make_token, old) == Decimal("0.5")
    assert balance(api, make_token, tenant) == Decimal(9)
    assert_ledger_consistent(api, make_token, old)

    # the refusals, each with its code
    again = attach(api, operator, tenant, old)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "sub_account_exists")
    assert again.json()["error"]["details"]["agencyId"] == tenant
    itself = attach(api, operator, tenant, tenant)
    assert (itself.status_code, itself.json()["error"]["details"]["field"]) == (400, "tenantId")
    other = f"o-{uuid.uuid4().hex[:10]}"
    _, other_manage = make_agency(api, make_token, other)
    agency_as_sub = attach(api, operator, tenant, other)
    assert (agency_as_sub.status_code, agency_as_sub.json()["error"]["code"]) == (409, "tenant_is_agency")
    plain = f"p-{uuid.uuid4().hex[:10]}"
    not_agency = attach(api, operator, plain, f"{plain}:x")
    assert (not_agency.status_code, not_agency.json()["error"]["details"]["field"]) == (404, "agencyId")
    # an id says nothing of its agency: `<other>:x` may be attached to this agency, and then the other
    # agency cannot create it
    outside = attach(api, operator, tenant, f"{other}:x")
    assert outside.status_code == 201, outside.text
    taken = api.post(f"{B}/sub-accounts", other_manage, json={"name": "x", "funding": "prepaid"})
    assert (taken.status_code, taken.json()["error"]["code"]) == (409, "sub_account_exists")
    assert api.get(f"{B}/wallet?tenantId={other}:x", other_manage).status_code == 404
    assert api.get(f"{B}/wallet?tenantId={other}:x", manage).status_code == 200
    # an empty tenant may be attached agency-funded
    fresh = attach(api, operator, tenant, f"{tenant}:fresh", funding="agency")
    assert fresh.status_code == 201, fresh.text
    # the same rule when a prepaid sub-account with money would become agency-funded
    switched = api.request("PATCH", f"{B}/sub-accounts/{old}", manage, json={"funding": "agency"})
    assert (switched.status_code, switched.json()["error"]["code"]) == (409, "sub_account_has_balance")
    assert api.get(f"{B}/sub-accounts/{old}", manage).json()["subAccount"]["funding"] == "prepaid"
    empty = create(api, manage, "empty")
    switched = api.request("PATCH", f"{B}/sub-accounts/{empty}", manage, json={"funding": "agency", "spendCap": "5"})
    assert switched.status_code == 200, switched.text
    assert (switched.json()["subAccount"]["funding"], switched.json()["subAccount"]["spendCap"]) == ("agency", "5")


def test_any_tenant_can_be_attached_its_agency_from_the_records(api, tenant, make_token, engine):
    """A tenant whose id names no agency (`<agency>-legacy`), with history, attached by the operator:
    its agency comes from the agencies' records, so its charges move both levels, its agency's tokens
    may name it, its documents are the agency's, and the agency sees its cost."""
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "10")
    legacy = f"{tenant}-legacy"
    top_up(api, make_token(legacy, "billing.admin"), "5")
    before = charge(api, make_token(legacy, "billing.charge"))
    assert before.status_code == 200 and before.json()["usageEvent"]["totalCost"] == "1"
    # the agency cannot name it yet (not its sub-account)
    assert api.get(f"{B}/wallet?tenantId={legacy}", manage).status_code == 404
    done = attach(api, make_token("operator", "billing.admin"), tenant, legacy)
    assert done.status_code == 201, done.text
    assert done.json()["subAccount"]["tenantId"] == legacy
    assert [s["tenantId"] for s in api.get(f"{B}/sub-accounts", manage).json()["subAccounts"]] == [legacy]
    api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "2"})
    after = charge(api, make_token(legacy, "billing.charge"))
    assert after.status_code == 200, after.text
    assert after.json()["usageEvent"]["totalCost"] == "2"  # resale: twice the agency's price
    assert balance(api, make_token, legacy) == Decimal(2)  # 5 - 1 (before) - 2 (resale)
    assert balance(api, make_token, tenant) == Decimal(9)  # the agency's price
    event_id = after.json()["usageEvent"]["id"]
    assert [(str(e), a) for e, a in entries(engine, tenant)] == [(event_id, Decimal(-1))]
    # the agency's token names it; the agency sees its own cost of the event
    seen = api.get(f"{B}/usage/{event_id}?tenantId={legacy}", manage)
    assert seen.status_code == 200, seen.text
    assert seen.json()["usageEvent"]["agencyCost"] == "1"
    margins = api.get(f"{B}/margins?groupBy=subAccount", manage).json()
    assert legacy in str(margins)
    # its documents are issued by the agency
    with UnitOfWork(engine_for(str(engine.url))) as uow:
        from billing_core.documents import parties

        assert parties.issuer_for(uow, legacy).id == parties.agency_issuer_id(tenant)
    assert_ledger_consistent(api, make_token, legacy)
    assert_ledger_consistent(api, make_token, tenant)


def test_the_preview_prices_as_charging_does_explicit_rows_included(api, tenant, make_token):
    manage, item, one, other = _book_tree(api, make_token, tenant)
    assert api.request("PUT", f"{B}/sub-accounts/prices/rows", manage,
                       json={**item, "unitPrice": "0.02", "subAccountId": one}).status_code == 200

    def use(sub, quantity):
        return _use(api, make_token, item, sub, quantity)["totalCost"]

    assert use(one, "100") == "2" and use(other, "1200") == "12"

    def preview(path, body):
        response = api.post(f"{B}/sub-accounts/prices{path}", manage, json=body)
        assert response.status_code == 200, response.text
        shown = response.json()["preview"]
        return shown["current"], shown["proposed"], shown["agencyCost"], shown["items"]

    # a multiplier of 3 for everyone: `one` keeps its explicit row (2), `other` pays 3 × 12
    assert preview("/preview", {"multiplier": "3"}) == ("14", "38", "13", 2)
    # an explicit graduated row for every sub-account: `one` keeps its own row, `other` is tiered
    # from its own month: 1000 at 0.01 + 200 at 0.005
    assert preview("/rows/preview", {**item, "pricingModel": "graduated", "tiers": TIERS}) == ("14", "13", "13", 2)
    # a row for `one` replaces its own: 100 × 0.05
    assert preview("/rows/preview", {**item, "unitPrice": "0.05", "subAccountId": one}) == ("14", "17", "13", 2)
    # nothing changed; a sub-account of another agency is not found
    assert use(one, "100") == "2"
    theirs = api.post(f"{B}/sub-accounts/prices/rows/preview", manage,
                      json={**item, "unitPrice": "0.05", "subAccountId": f"o-{uuid.uuid4().hex[:6]}:x"})
    assert theirs.status_code == 404


def test_the_preview_prices_events_as_their_corrections_left_them(api, tenant, make_token):
    manage, item, one, other = _book_tree(api, make_token, tenant)

    def use(sub, quantity):
        return _use(api, make_token, item, sub, quantity)["id"]

    voided, amended = use(one, "100"), use(other, "1200")
    use(one, "100")

    def preview():
        response = api.post(f"{B}/sub-accounts/prices/preview", manage, json={"multiplier": "3"})
        assert response.status_code == 200, response.text
        shown = response.json()["preview"]
        return shown["current"], shown["proposed"], shown["agencyCost"], shown["items"]

    assert preview() == ("14", "42", "14", 3)  # at the agency's price: 1 + 12 + 1; x3
    for sub, event_id, body in ((one, voided, {"action": "void"}),
                                (other, amended, {"action": "amend", "items": [{**item, "quantity": "600"}]})):
        response = api.post(f"{B}/usage/{event_id}/corrections", make_token(sub, "billing.admin"),
                            json={**body, "reason": "test", "idempotencyKey": f"k-{uuid.uuid4()}"})
        assert response.status_code == 200, response.text
    # the void is left out, the amend priced at its 600: 1 + 6 now, 3 + 18 at the proposed book
    assert preview() == ("7", "21", "7", 2)


def _book_tree(api, make_token, tenant):
    """An agency (price 0.01 for a new item) with two funded prepaid sub-accounts, for the preview tests."""
    admin, manage = make_agency(api, make_token, tenant)
    top_up(api, admin, "100")
    item = new_item()
    put_price(api, make_token("operator", "billing.admin"), item, unitPrice="0.01")  # the agency's price
    one, other = create(api, manage, "pv-1"), create(api, manage, "pv-2")
    for sub in (one, other):
        api.post(f"{B}/sub-accounts/{sub}/topups", manage, json={"amount": "50", "idempotencyKey": "t"})
    return manage, item, one, other


def _use(api, make_token, item, sub, quantity):
    response = api.post(f"{B}/charge?wait=20", make_token(sub, "billing.charge"), json={
        "featureKey": "f", "idempotencyKey": f"c-{uuid.uuid4()}", "items": [{**item, "quantity": quantity}]})
    assert response.status_code == 200, response.text
    return response.json()["usageEvent"]
