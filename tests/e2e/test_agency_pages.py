"""Agencies on the page surfaces and the isolation sweep (issue 21): the operator's console shows the
agencies and their trees (agency price against provider cost); an agency's portal lists its
sub-accounts, opens its own (404 otherwise), tops up a prepaid one (CSRF, idempotent) and edits its
price book with a preview; a sub-account's portal names its agency, not LAD. The sweep fetches every
GET endpoint and portal page a sub-account (and an agency) can reach and looks for the numbers of the
level above: distinctive prices, so a leak is recognisable."""
from __future__ import annotations

import re
import uuid
from decimal import Decimal
from typing import Any

import pytest
import requests

from tests.e2e.test_pages import Visit, _csrf, _opened, browser, console_link, portal_link  # noqa: F401
from tests.support.helpers import top_up

B = "/api/billing"
AGENCY_UNIT = "0.0731"  # what LAD charges the agency per unit (its own price)
PROVIDER_UNIT = "0.0419"  # what LAD pays the provider per unit
QUANTITY = "100"
AGENCY_COST, PROVIDER_COST = "7.31", "4.19"  # of one charge of QUANTITY
RESALE = "10.965"  # QUANTITY × AGENCY_UNIT × 1.5: the sub-account's price
AGENCY_NUMBERS = (AGENCY_UNIT, AGENCY_COST)
PROVIDER_NUMBERS = (PROVIDER_UNIT, PROVIDER_COST)


def _charge(api: Any, token: str, item: dict[str, str]) -> dict[str, Any]:
    response = api.post(f"{B}/charge?wait=20", token, json={
        "featureKey": "agent", "idempotencyKey": f"c-{uuid.uuid4()}", "externalReferenceId": f"call-{uuid.uuid4()}",
        "items": [{**item, "quantity": QUANTITY}]})
    assert response.status_code == 200, response.text
    return response.json()["usageEvent"]


@pytest.fixture(scope="module")
def tree(live: Any, make_token: Any) -> dict[str, Any]:
    """An agency (named "Northwind Voice Ltd" in its billing details) with a prepaid and an agency-funded
    sub-account, a resale book of 1.5, one charge each; another agency with a sub-account of its own."""
    api = live.api
    agency = f"ag-{uuid.uuid4().hex[:8]}"
    admin, manage = make_token(agency, "billing.admin"), make_token(agency, "billing.manage", "billing.view")
    assert api.request("PATCH", f"{B}/wallet", admin, json={"reseller": True}).status_code == 200
    assert api.request("PUT", f"{B}/settings/billing-details", manage, json={
        "legalName": "Northwind Voice Ltd", "address": "2 Harbour Street, Bristol"}).status_code == 200
    top_up(api, admin, "100")
    operator = make_token("ops", "billing.admin")
    item = {"category": "test_voice", "provider": "acme", "model": f"m-{uuid.uuid4().hex[:10]}", "unit": "minute"}
    assert api.request("PUT", f"{B}/pricing", operator, json={**item, "unitPrice": AGENCY_UNIT,
                                                              "tenantId": agency}).status_code == 200
    assert api.request("PUT", f"{B}/costs", operator, json={**item, "unitCost": PROVIDER_UNIT}).status_code == 200
    assert api.request("PUT", f"{B}/sub-accounts/prices", manage, json={"multiplier": "1.5"}).status_code == 200
    subs = {}
    for name, funding in (("prepaid", "prepaid"), ("funded", "agency")):
        response = api.post(f"{B}/sub-accounts", manage, json={"name": name, "funding": funding})
        assert response.status_code == 201, response.text
        subs[name] = response.json()["subAccount"]["tenantId"]
    assert api.post(f"{B}/sub-accounts/{subs['prepaid']}/topups", manage,
                    json={"amount": "50", "idempotencyKey": "first"}).status_code == 200
    tokens = {name: make_token(sub, "billing.manage", "billing.view", "billing.charge") for name, sub in subs.items()}
    events = {name: _charge(api, tokens[name], item) for name in subs}
    assert events["prepaid"]["totalCost"] == RESALE
    other = f"ag-{uuid.uuid4().hex[:8]}"
    assert api.request("PATCH", f"{B}/wallet", make_token(other, "billing.admin"),
                       json={"reseller": True}).status_code == 200
    theirs = api.post(f"{B}/sub-accounts", make_token(other, "billing.manage"), json={"name": "x", "funding": "prepaid"})
    assert theirs.status_code == 201
    return {"agency": agency, "manage": manage, "admin": admin, "subs": subs, "tokens": tokens, "events": events,
            "item": item, "other": other, "theirs": theirs.json()["subAccount"]["tenantId"]}


def _portal(api: Any, token: str) -> tuple[requests.Session, str]:
    link = portal_link(api, token, ttlMinutes=30)
    return _opened(link["url"]), link["url"].split("/portal/")[0]


# --- the agency's portal over HTTP -------------------------------------------------------------------

def test_the_agency_opens_its_own_sub_accounts_only_and_tops_up_once(api, tree):
    session, base = _portal(api, tree["manage"])
    listed = session.get(f"{base}/portal/sub-accounts")
    assert listed.status_code == 200
    for sub in tree["subs"].values():
        assert sub in listed.text
    assert RESALE in listed.text and AGENCY_COST in listed.text  # spend and the agency's own cost
    assert not any(n in listed.text for n in PROVIDER_NUMBERS)
    prepaid = tree["subs"]["prepaid"]
    page = session.get(f"{base}/portal/sub-accounts/{prepaid}")
    assert page.status_code == 200 and "Top up" in page.text
    event = tree["events"]["prepaid"]["id"]
    call = session.get(f"{base}/portal/sub-accounts/{prepaid}/usage/{event}")
    assert call.status_code == 200 and RESALE in call.text and AGENCY_COST in call.text
    for other in (tree["theirs"], tree["other"], f"{tree['agency']}:nobody", tree["agency"]):
        assert session.get(f"{base}/portal/sub-accounts/{other}").status_code == 404, other
        assert session.get(f"{base}/portal/sub-accounts/{other}/usage/{event}").status_code == 404
    assert "Top up" not in session.get(f"{base}/portal/sub-accounts/{tree['subs']['funded']}").text

    key = re.search(r'name="idempotencyKey" value="([^"]+)"', page.text).group(1)
    form = {"csrf_token": _csrf(page.text), "amount": "2.5", "description": "paid by the client",
            "idempotencyKey": key}
    before = Decimal(api.get(f"{B}/wallet?tenantId={prepaid}", tree["manage"]).json()["wallet"]["currentBalance"])
    for _ in range(2):  # sent twice: tops up once
        assert session.post(f"{base}/portal/sub-accounts/{prepaid}/topup", data=form).status_code == 200
    after = Decimal(api.get(f"{B}/wallet?tenantId={prepaid}", tree["manage"]).json()["wallet"]["currentBalance"])
    assert after == before + Decimal("2.5")
    no_csrf = session.post(f"{base}/portal/sub-accounts/{prepaid}/topup", data={**form, "csrf_token": "x"})
    assert no_csrf.status_code == 403
    funded = session.post(f"{base}/portal/sub-accounts/{tree['subs']['funded']}/topup",
                          data={**form, "idempotencyKey": str(uuid.uuid4())})
    assert funded.status_code == 400 and "funded by its agency" in funded.text
    theirs = session.post(f"{base}/portal/sub-accounts/{tree['theirs']}/topup",
                          data={**form, "idempotencyKey": str(uuid.uuid4())})
    assert theirs.status_code == 404


def test_the_price_book_page_previews_then_saves(api, tree):
    session, base = _portal(api, tree["manage"])
    page = session.get(f"{base}/portal/sub-accounts/prices")
    assert page.status_code == 200 and "1.5" in page.text
    csrf = _csrf(page.text)
    sub = tree["subs"]["prepaid"]
    preview = session.post(f"{base}/portal/sub-accounts/prices/multiplier", data={
        "csrf_token": csrf, "multiplier": "2", "subAccountId": sub, "do": "preview"})
    assert preview.status_code == 200, preview.text
    shown = dict(re.findall(r'data-testid="preview-(\w+)"><span class="num">([0-9.]+)<', preview.text))
    # the prepaid one at 2 × 7.31, the funded one still at 1.5
    assert shown["proposed"] == str(Decimal(AGENCY_COST) * 2 + Decimal(RESALE))
    assert api.get(f"{B}/sub-accounts/prices", tree["manage"]).json()["prices"][0]["multiplier"] == "1.5"
    row = {"csrf_token": csrf, **tree["item"], "pricingModel": "graduated", "tiers": "50 0.2\n- 0.1", "do": "preview"}
    preview = session.post(f"{base}/portal/sub-accounts/prices/row", data=row)
    assert preview.status_code == 200, preview.text
    shown = dict(re.findall(r'data-testid="preview-(\w+)"><span class="num">([0-9.]+)<', preview.text))
    assert shown["proposed"] == "30"  # each: 50 at 0.2 + 50 at 0.1
    bad = session.post(f"{base}/portal/sub-accounts/prices/row", data={**row, "tiers": "a b c"})
    assert bad.status_code == 400 and "tiers" in bad.text
    saved = session.post(f"{base}/portal/sub-accounts/prices/row", data={**row, "do": "save",
                                                                        "subAccountId": tree["subs"]["funded"]})
    assert saved.status_code == 200 and "Saved: the price row" in saved.text
    assert "50" in saved.text and tree["subs"]["funded"] in saved.text
    # the funded sub-account's next charge is priced by the saved row (graduated from its own month)
    assert _charge(api, tree["tokens"]["funded"], tree["item"])["totalCost"] == "15"
