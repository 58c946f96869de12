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

from tests.e2e.test_pages import Visit, _csrf, _opened, browser, console_link, portal_link  # noqa: F401 (browser: the fixture)
from tests.support.helpers import top_up

B = "/api/billing"
AGENCY_UNIT = "0.0731"  # what LAD charges the agency per unit (its own price)
PROVIDER_UNIT = "0.0419"  # what LAD pays the provider per unit
QUANTITY = "100"
AGENCY_COST, PROVIDER_COST = "7.31", "4.19"  # of one charge of QUANTITY
RESALE = "10.965"  # QUANTITY × AGENCY_UNIT × 1.5: the sub-account's price
AGENCY_NUMBERS = (AGENCY_UNIT, AGENCY_COST)
PROVIDER_NUMBERS = (PROVIDER_UNIT, PROVIDER_COST)


def shown(numbers: tuple[str, ...], text: str) -> list[str]:
    """The numbers that appear in the text as numbers of their own (not inside a longer one, nor in a
    time's seconds: "…:07.31…" is not 7.31)."""
    return [n for n in numbers if re.search(rf"(?<![\d.:]){re.escape(n)}(?!\d)", text)]


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
    assert not shown(PROVIDER_NUMBERS, listed.text)
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


# --- the isolation sweep -----------------------------------------------------------------------------

def _get_routes(api: Any) -> list[str]:
    spec = api.get("/openapi.json").json()
    return sorted(path for path, operations in spec["paths"].items() if "get" in operations)


def _filled(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), str(uuid.uuid4())), path)


def _sweep_api(api: Any, token: str, values: dict[str, str], forbidden: tuple[str, ...],
               queries: tuple[str, ...] = ("",)) -> dict[str, int]:
    """Every GET route with the token (path parameters filled with the caller's own ids where known);
    no answer carries a forbidden number. Answers the status of each address."""
    seen = {}
    for route in _get_routes(api):
        for query in queries:
            address = _filled(route, values) + query
            response = api.get(address, token)
            assert response.status_code != 500, (address, response.text)
            body = response.content.decode("latin-1")
            leaked = shown(forbidden, body)
            assert not leaked, (address, leaked, body[:2000])
            seen[address] = response.status_code
    return seen


def test_nothing_a_sub_account_can_reach_shows_the_level_above(api, tree):
    sub, sibling = tree["subs"]["prepaid"], tree["subs"]["funded"]
    token = tree["tokens"]["prepaid"]
    event = tree["events"]["prepaid"]
    values = {"usage_event_id": event["id"], "tenant_id": sub, "external_reference_id": event["externalReferenceId"]}
    seen = _sweep_api(api, token, values, AGENCY_NUMBERS + PROVIDER_NUMBERS)
    assert seen[f"{B}/usage/{event['id']}"] == 200 and seen[f"{B}/wallet"] == 200
    assert seen[f"{B}/pricing"] == 200 and seen[f"{B}/invoices/preview"] == 200
    assert seen[f"{B}/sub-accounts"] == 404  # a sub-account has no tree
    assert RESALE in api.get(f"{B}/usage/{event['id']}", token).text  # it does see its own price
    # naming its agency or a sibling, anywhere a tenant may be named: not found
    for named in (tree["agency"], sibling):
        seen = _sweep_api(api, token, {**values, "tenant_id": named}, AGENCY_NUMBERS + PROVIDER_NUMBERS,
                          queries=(f"?tenantId={named}",))
        assert all(status != 200 for a, status in seen.items() if a.startswith(B)), \
            [a for a, s in seen.items() if s == 200 and a.startswith(B)]
        assert seen[f"{B}/wallet?tenantId={named}"] == 404

    session, base = _portal(api, tree["tokens"]["prepaid"])
    pages = ["/portal/", "/portal/usage", f"/portal/usage/{event['id']}",
             f"/portal/calls/{event['externalReferenceId']}", "/portal/invoices", "/portal/settings"]
    for path in pages:
        page = session.get(base + path)
        assert page.status_code == 200, (path, page.status_code)
        assert not shown(AGENCY_NUMBERS + PROVIDER_NUMBERS, page.text), path
        assert "Northwind Voice Ltd" in page.text and "LAD" not in page.text, path  # its agency's brand only
    for path in ("/portal/sub-accounts", "/portal/sub-accounts/prices", f"/portal/sub-accounts/{sibling}",
                 f"/portal/sub-accounts/{sub}"):
        assert session.get(base + path).status_code == 404, path


def test_nothing_an_agency_can_reach_shows_provider_costs(api, tree):
    manage = tree["manage"]
    sub = tree["subs"]["prepaid"]
    event = tree["events"]["prepaid"]
    values = {"usage_event_id": event["id"], "tenant_id": sub, "external_reference_id": event["externalReferenceId"]}
    seen = _sweep_api(api, manage, values, PROVIDER_NUMBERS, queries=("", f"?tenantId={sub}"))
    assert seen[f"{B}/usage/{event['id']}?tenantId={sub}"] == 200
    assert seen[f"{B}/sub-accounts/{sub}"] == 200
    # another agency's sub-account, another agency, a tenant that is not its own: not found
    for named in (tree["theirs"], tree["other"], f"t-{uuid.uuid4().hex[:8]}"):
        seen = _sweep_api(api, manage, {**values, "tenant_id": named}, PROVIDER_NUMBERS,
                          queries=(f"?tenantId={named}",))
        assert seen[f"{B}/wallet?tenantId={named}"] == 404
        assert seen[f"{B}/sub-accounts/{named}?tenantId={named}"] == 404
        assert all(status != 200 for address, status in seen.items() if address.startswith(B)
                   and "/sub-accounts/prices" not in address and "/sub-accounts?" not in address), \
            [a for a, s in seen.items() if s == 200]
    # no id outside its namespace; no tenant with history
    outside = api.post(f"{B}/sub-accounts", manage, json={"name": f"{tree['other']}:y", "funding": "prepaid"})
    assert outside.status_code == 400
    claimed = api.post(f"{B}/sub-accounts", manage, json={"name": "prepaid", "funding": "prepaid"})
    assert claimed.status_code == 409 and claimed.json()["error"]["code"] == "sub_account_exists"

    session, base = _portal(api, manage)
    for path in ("/portal/", "/portal/usage", "/portal/invoices", "/portal/settings", "/portal/sub-accounts",
                 f"/portal/sub-accounts/{sub}", f"/portal/sub-accounts/{sub}/usage/{event['id']}",
                 "/portal/sub-accounts/prices"):
        page = session.get(base + path)
        assert page.status_code == 200, (path, page.status_code)
        assert not shown(PROVIDER_NUMBERS, page.text), path


def test_the_console_shows_agency_price_against_provider_cost(api, live, tree, make_token):
    link = console_link(api, make_token("ops", "billing.admin"))
    session = _opened(link["url"])
    base = link["url"].split("/console/")[0]
    listed = session.get(f"{base}/console/agencies")
    assert listed.status_code == 200 and tree["agency"] in listed.text
    page = session.get(f"{base}/console/agencies/{tree['agency']}")
    assert page.status_code == 200
    for sub in tree["subs"].values():
        assert sub in page.text
    assert PROVIDER_COST in page.text and AGENCY_COST in page.text and RESALE in page.text
    assert session.get(f"{base}/console/agencies/{tree['subs']['prepaid']}").status_code == 404
    tenant_page = session.get(f"{base}/console/tenants/{tree['subs']['prepaid']}")
    assert tenant_page.status_code == 200 and f"A sub-account of <a href=\"/console/agencies/{tree['agency']}\"" in \
        tenant_page.text
    assert "An agency:" in session.get(f"{base}/console/tenants/{tree['agency']}").text


# --- in the browser ----------------------------------------------------------------------------------

@pytest.mark.browser
def test_the_agency_portal_in_the_browser(request, api, tree):
    sub = tree["subs"]["prepaid"]
    link = portal_link(api, tree["manage"], ttlMinutes=30)
    with Visit(request.getfixturevalue("browser"), viewport={"width": 1280, "height": 900}) as v:
        page = v.page
        v.open(link["url"], "agency-portal-overview")
        v.click(page.get_by_role("link", name="Sub-accounts", exact=True), "agency-portal-sub-accounts")
        assert page.locator("#sub-accounts-table tbody tr").count() == 2
        v.click(page.get_by_role("link", name=sub), "agency-portal-sub-account")
        before = Decimal(page.get_by_test_id("balance").inner_text())
        page.get_by_label("Amount").fill("1.25")
        page.get_by_label("Description").fill("paid by the client in cash")
        v.click(page.get_by_role("button", name="Top up"))
        assert "Topped up." in page.inner_text("main")
        assert Decimal(page.get_by_test_id("balance").inner_text()) == before + Decimal("1.25")
        v.click(page.locator("#sub-account-usage tbody a").first, "agency-portal-sub-account-call")
        assert page.get_by_test_id("total-cost").inner_text().startswith(RESALE)
        assert page.get_by_test_id("agency-cost").inner_text().startswith(AGENCY_COST)

        v.click(page.get_by_role("link", name="Price book"), "agency-portal-price-book")
        page.get_by_label("Multiplier", exact=True).fill("1.75")
        page.get_by_label("Category (empty: any)", exact=True).fill(tree["item"]["category"])
        v.click(page.locator("form:has(#m-multiplier)").get_by_role("button", name="Preview"),
                "agency-portal-price-book-preview")
        assert page.locator("#preview").is_visible()
        assert page.get_by_label("Multiplier", exact=True).input_value() == "1.75", "the form keeps what was typed"
        v.click(page.locator("form:has(#m-multiplier)").get_by_role("button", name="Save"))
        assert "Saved: the multiplier." in page.inner_text("main")
        assert "1.75" in page.inner_text("#multipliers-table")
        v.open(page.url.split("/portal/")[0] + f"/portal/sub-accounts/{tree['theirs']}", status=404)
    assert any(p["multiplier"] == "1.75" for p in api.get(f"{B}/sub-accounts/prices", tree["manage"]).json()["prices"])


@pytest.mark.browser
def test_the_sub_account_portal_carries_its_agency_s_name(request, api, tree):
    link = portal_link(api, tree["tokens"]["prepaid"], ttlMinutes=30)
    with Visit(request.getfixturevalue("browser"), viewport={"width": 390, "height": 844}) as v:
        v.open(link["url"], "sub-account-portal-overview")
        assert v.page.locator("header .brand").inner_text().startswith("Northwind Voice Ltd")
        assert "LAD" not in v.page.content()
        assert v.page.get_by_role("link", name="Sub-accounts").count() == 0
        v.click(v.page.get_by_role("link", name="Usage", exact=True), "sub-account-portal-usage")
        assert "LAD" not in v.page.content()


@pytest.mark.browser
def test_the_console_agencies_and_a_tree_in_the_browser(request, api, tree, make_token):
    link = console_link(api, make_token("ops", "billing.admin"))
    with Visit(request.getfixturevalue("browser"), viewport={"width": 1280, "height": 900}) as v:
        page = v.page
        v.open(link["url"])
        v.click(page.get_by_role("link", name="Agencies"), "console-agencies")
        v.click(page.get_by_role("link", name=tree["agency"]), "console-agency")
        rows = page.locator("#tree-table tbody tr")
        assert rows.count() == 2
        assert page.locator("#tree-table").get_by_text(PROVIDER_COST).count() >= 1
