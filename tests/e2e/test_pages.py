"""The tenant's billing portal and the operators' console in a real browser: Debian's headless chromium
driven by Playwright, axe-core run in every page, the security cases over plain HTTP. One browser for
the module; screenshots of every page land in .data/test/screenshots/ on every run."""
from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from pypdf import PdfReader
from sqlalchemy import text

from billing_core.db import UnitOfWork, engine_for
from billing_core.invoicing.invoices import rollup
from devstack.stack import ROOT
from tests.support.helpers import stt_items, top_up, wait_until_settled
from tests.support.invoices import STT, TTS, History, items, months
from tests.support.polling import eventually

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = ROOT / ".data" / "test" / "screenshots"
AXE = (ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js").read_text()
SCRIPT = '<script>window.__pwned = 1</script>'
PHONE = {"width": 390, "height": 844}


# --- the browser ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Visit:
    """One browser context (one person's cookies) and its page; every page it opens is checked with
    axe-core, must carry the CSP header, must not trip the CSP, and is photographed."""

    def __init__(self, browser: Any, **options: Any):
        self.context = browser.new_context(accept_downloads=True, **options)
        self.page = self.context.new_page()
        self.csp_violations: list[str] = []
        self.page.on("console", lambda m: "Content Security Policy" in m.text and self.csp_violations.append(m.text))

    def open(self, url: str, shot: str | None = None, status: int = 200) -> Any:
        response = self.page.goto(url)
        assert response is not None and response.status == status, (url, response and response.status)
        self.checked(response, shot)
        return response

    def checked(self, response: Any, shot: str | None) -> None:
        csp = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "frame-ancestors" in csp, csp
        self.page.wait_for_load_state("load")
        width = self.page.viewport_size["width"]
        assert self.page.evaluate("document.documentElement.scrollWidth") <= width, f"{self.page.url} is wider"
        self.axe()
        assert not self.csp_violations, self.csp_violations
        if shot:
            self.page.screenshot(path=str(SCREENSHOTS / f"{shot}.png"), full_page=True)

    def axe(self) -> None:
        # evaluate() runs over the DevTools protocol, which the page's CSP does not govern
        self.page.evaluate(AXE)
        result = self.page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result["violations"]
               if v["impact"] in ("serious", "critical")]
        assert not bad, f"{self.page.url}: {bad}"

    def click(self, locator: Any, shot: str | None = None) -> None:
        """Click what leads to another page, and check that page."""
        with self.page.expect_navigation() as navigation:
            locator.click()
        assert navigation.value.status == 200, (self.page.url, navigation.value.status)
        self.checked(navigation.value, shot)

    def __enter__(self) -> Visit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.context.close()


# --- data -------------------------------------------------------------------------------------------

def portal_link(api: Any, token: str, **body: Any) -> dict[str, Any]:
    response = api.post("/api/billing/portal-sessions", token, json=body)
    assert response.status_code == 200, response.text
    return response.json()["portalSession"]


def console_link(api: Any, token: str) -> dict[str, Any]:
    response = api.post("/api/billing/console-sessions", token, json={"ttlMinutes": 30})
    assert response.status_code == 200, response.text
    return response.json()["consoleSession"]


def charge(api: Any, token: str, feature: str, lines: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    response = api.post("/api/billing/charge?wait=20", token,
                        json={"featureKey": feature, "items": lines, "idempotencyKey": str(uuid.uuid4()), **extra})
    assert response.status_code in (200, 202), response.text
    task_id = response.json()["taskId"]
    return wait_until_settled(api, token, [task_id])[task_id]["usageEvent"]


@pytest.fixture(scope="module")
def tenant_a(live: Any, make_token: Any) -> dict[str, Any]:
    """A tenant with a finalized invoice last month, charges now (one dearer than the rest), a hold, and a
    value with a script tag in it wherever a tenant may write text."""
    api, tenant = live.api, f"portal-{uuid.uuid4().hex[:8]}"
    tokens = {"admin": make_token(tenant, "billing.admin"), "manage": make_token(tenant, "billing.manage"),
              "charge": make_token(tenant, "billing.charge", "billing.view")}
    engine = engine_for(live.env["DATABASE_URL"])
    previous, _ = months()
    history = History(engine, tenant)
    history.top_up(previous.start + timedelta(days=2), "5")
    history.charge(previous.start + timedelta(days=2, hours=1), "transcribe", items((STT, "12345")))
    with UnitOfWork(engine) as uow:
        invoice_id = rollup(uow, previous, tenant_id=tenant).invoice_ids[0]
    top_up(api, tokens["admin"], "20")
    cheap = charge(api, tokens["charge"], "transcribe", stt_items("1500"))
    dear = charge(api, tokens["charge"], "speak", items((TTS, "98765"), (STT, "333")),
                  externalReferenceId=f"call {SCRIPT}", metadata={"campaign": SCRIPT, "agent": "Ada"})
    hold = api.post("/api/billing/reservations", tokens["charge"],
                    json={"featureKey": "call", "amount": "0.75", "idempotencyKey": str(uuid.uuid4())})
    assert hold.status_code == 200, hold.text
    invoice = api.get(f"/api/billing/invoices/{invoice_id}", tokens["admin"]).json()["invoice"]
    return {"tenant": tenant, "tokens": tokens, "invoice": invoice, "cheap": cheap, "dear": dear, "engine": engine}


@pytest.fixture(scope="module")
def tenant_b(live: Any, make_token: Any) -> dict[str, Any]:
    api, tenant = live.api, f"other-{uuid.uuid4().hex[:8]}"
    admin, charger = make_token(tenant, "billing.admin"), make_token(tenant, "billing.charge", "billing.view")
    engine = engine_for(live.env["DATABASE_URL"])
    previous, _ = months()
    history = History(engine, tenant)
    history.top_up(previous.start + timedelta(days=3), "2")
    with UnitOfWork(engine) as uow:
        invoice_id = rollup(uow, previous, tenant_id=tenant).invoice_ids[0]
    top_up(api, admin, "3")
    event = charge(api, charger, "transcribe", stt_items("10"))
    return {"tenant": tenant, "invoice_id": str(invoice_id), "event_id": event["id"], "admin": admin}


# --- the portal in the browser ----------------------------------------------------------------------

@pytest.mark.browser
def test_portal_balance_chart_breakdown_invoice_and_alert_threshold(browser, api, tenant_a):
    tokens = tenant_a["tokens"]
    link = portal_link(api, tokens["manage"], ttlMinutes=30)
    wallet = api.get("/api/billing/wallet", tokens["admin"]).json()["wallet"]
    with Visit(browser, viewport=PHONE) as v:
        page = v.page
        v.open(link["url"], "portal-overview")
        assert page.url.endswith("/portal/"), "the token leaves the address bar"
        cookie = next(c for c in v.context.cookies() if c["name"] == "lad_portal")
        assert cookie["httpOnly"] and cookie["sameSite"] in ("Lax", "Strict", "None")
        assert page.get_by_test_id("available").inner_text() == wallet["availableBalance"]
        assert page.get_by_test_id("reserved").inner_text() == wallet["reservedBalance"] == "0.75"
        assert page.get_by_test_id("current").inner_text() == wallet["currentBalance"]

        v.click(page.get_by_role("link", name="Usage", exact=True), "portal-usage")
        assert page.locator("#spend-table caption").inner_text().endswith("(30 days)")
        assert page.evaluate("!!Chart.getChart(document.getElementById('spend-chart'))"), "the chart is drawn"
        v.click(page.get_by_role("link", name="7 days"))
        assert page.locator("#spend-table caption").inner_text().endswith("(7 days)")
        assert page.locator("#spend-table tbody tr").count() == 7
        v.click(page.get_by_role("link", name="category"), "portal-usage-by-category")
        headers = page.locator("#spend-table thead th").all_inner_texts()
        assert {"stt", "tts"} <= set(headers), headers
        # any days: last month's charge is in a range that ends before today's
        previous, _ = months()
        page.get_by_label("From", exact=True).fill(previous.start.date().isoformat())
        page.get_by_label("To", exact=True).fill((previous.start + timedelta(days=9)).date().isoformat())
        v.click(page.get_by_role("button", name="Show"))
        assert page.locator("#spend-table tbody tr").count() == 10
        assert page.locator("#spend-table tfoot td").all_inner_texts() == ["1.2345"]  # 12345 s of stt
        v.click(page.get_by_role("link", name="7 days"))

        # the dearest call is first in the top calls; its breakdown has every item as charged
        v.click(page.locator("section:has(#top-calls) tbody a").first, "portal-call")
        assert tenant_a["dear"]["id"] in page.url
        detail = api.get(f"/api/billing/usage/{tenant_a['dear']['id']}", tokens["admin"]).json()["usageEvent"]
        assert page.get_by_test_id("total-cost").inner_text().startswith(detail["totalCost"])
        rows = page.locator("#items-table tbody tr")
        assert rows.count() == len(detail["items"]) == 2
        columns = page.locator("#items-table thead th").all_inner_texts()
        for index, item in enumerate(detail["items"]):
            cells = rows.nth(index).locator("td").all_inner_texts()
            for key, value in item.items():
                assert cells[columns.index(key)] == (value if value is not None else "—")

        v.click(page.get_by_role("link", name="Invoices"), "portal-invoices")
        invoice = tenant_a["invoice"]
        with page.expect_download() as download:
            page.get_by_role("link", name=f"PDF for {invoice['period']}").click()
        pdf = PdfReader(io.BytesIO(Path(download.value.path()).read_bytes()))
        pdf_text = "".join(p.extract_text() for p in pdf.pages)
        assert invoice["totalUsage"] in pdf_text and invoice["closingBalance"] in pdf_text

        v.click(page.get_by_role("link", name="Settings"), "portal-settings")
        page.get_by_label("Thresholds").fill("5, 1.25")
        page.get_by_label("E-mail").fill("billing@example.com")
        v.click(page.get_by_role("button", name="Save alerts"))
        assert "Saved: alerts" in page.inner_text("main")
        v.click(page.get_by_role("button", name="Sign out"), "portal-signed-out")
        assert requests.get(link["url"], timeout=30).status_code == 401, "signing out revokes the link"
        assert page.goto(link["url"].split("/open")[0] + "/").status == 401
    settings = api.get("/api/billing/settings/alerts", tokens["admin"]).json()["alerts"]
    assert settings["thresholds"] == ["5", "1.25"] and settings["email"] == "billing@example.com"


@pytest.mark.browser
def test_tables_read_without_javascript(browser, api, tenant_a):
    link = portal_link(api, tenant_a["tokens"]["manage"])
    with Visit(browser, java_script_enabled=False) as v:
        v.page.goto(link["url"])
        v.page.goto(v.page.url.replace("/portal/", "/portal/usage?days=7"))
        assert v.page.locator("#spend-table tbody tr").count() == 7
        assert tenant_a["cheap"]["totalCost"] in v.page.inner_text("#spend-table tfoot")


@pytest.mark.browser
def test_a_script_in_a_tenant_s_values_is_shown_as_text(browser, api, tenant_a, make_token):
    tokens = tenant_a["tokens"]
    link = portal_link(api, tokens["manage"])
    with Visit(browser, viewport={"width": 1100, "height": 760}) as v:
        v.open(link["url"])
        v.open(v.page.url + "usage?days=7")
        v.page.screenshot(path=str(SCREENSHOTS / "portal-usage-desktop.png"))  # the README's picture
        v.open(v.page.url.split("usage")[0] + f"usage/{tenant_a['dear']['id']}")
        assert SCRIPT in v.page.inner_text("main")
        assert v.page.evaluate("window.__pwned") is None
        v.open(link["url"] + "x", "portal-refused", status=401)  # the refusal page is a page too
        assert "does not open anything" in v.page.inner_text("main")
    response = api.post("/api/billing/adjustments", tokens["admin"],
                        json={"amount": "0.01", "reason": f"goodwill {SCRIPT}", "idempotencyKey": str(uuid.uuid4())})
    assert response.status_code == 200, response.text
    console = console_link(api, make_token("ops", "billing.admin"))
    with Visit(browser) as v:
        v.open(console["url"])
        v.open(v.page.url + f"tenants/{tenant_a['tenant']}")
        assert SCRIPT in v.page.inner_text("#ledger-table")
        assert v.page.evaluate("window.__pwned") is None


# --- the console in the browser ---------------------------------------------------------------------

@pytest.mark.browser
def test_console_search_a_tenant_top_it_up_with_a_reason_and_see_the_ledger_entry(browser, api, tenant_a,
                                                                                 make_token):
    tenant = tenant_a["tenant"]
    link = console_link(api, make_token("ops", "billing.admin"))
    before = api.get("/api/billing/wallet", tenant_a["tokens"]["admin"]).json()["wallet"]["currentBalance"]
    with Visit(browser, viewport={"width": 1280, "height": 900}) as v:
        page = v.page
        v.open(link["url"], "console-tenants")
        page.get_by_label("Tenant id contains").fill(tenant[-6:])
        v.click(page.get_by_role("button", name="Search"))
        assert page.locator("#tenants-table tbody tr").count() == 1
        page.get_by_label("blocked only").check()
        v.click(page.get_by_role("button", name="Search"))
        assert page.locator("#tenants-table tbody tr").all_inner_texts() == ["No tenant matches."]
        page.get_by_label("blocked only").uncheck()
        v.click(page.get_by_role("button", name="Search"))
        v.click(page.get_by_role("link", name=tenant), "console-tenant")
        page.screenshot(path=str(SCREENSHOTS / "console-tenant-desktop.png"))  # the README's picture
        page.get_by_label("Amount", exact=True).fill("2.125")
        page.get_by_label("Reason").first.fill("goodwill for the outage")
        v.click(page.get_by_role("button", name="Top up"))
        first = page.locator("#ledger-table tbody tr").first.locator("td").all_inner_texts()
        assert first[1:5] == ["topup", "2.125", before, str(Decimal(before) + Decimal("2.125"))]
        assert first[6] == "goodwill for the outage"
        for shot, name in (("console-catalog", "Catalog and costs"), ("console-margins", "Margins"),
                           ("console-operations", "Operations")):
            v.click(page.get_by_role("link", name=name), shot)
    entries = api.get("/api/billing/transactions?type=topup", tenant_a["tokens"]["admin"]).json()["transactions"]
    assert [e["description"] for e in entries].count("goodwill for the outage") == 1
    assert entries[0]["amount"] == "2.125"


def test_a_form_sent_twice_tops_up_once(api, live, tenant_b, make_token):
    session, base = _console_session(api, live, make_token)
    tenant = tenant_b["tenant"]
    page = session.get(f"{base}/console/tenants/{tenant}").text
    form = {"csrf_token": _csrf(page), "amount": "0.5", "kind": "paid", "description": "sent twice",
            "idempotencyKey": re.search(r'name="idempotencyKey" value="([^"]+)"', page).group(1)}
    for _ in range(2):
        assert session.post(f"{base}/console/tenants/{tenant}/topup", data=form).status_code == 200
    entries = api.get("/api/billing/transactions?type=topup", tenant_b["admin"]).json()["transactions"]
    assert [e["description"] for e in entries].count("sent twice") == 1
    no_reason = session.post(f"{base}/console/tenants/{tenant}/topup", data={**form, "description": "",
                                                                             "idempotencyKey": str(uuid.uuid4())})
    assert no_reason.status_code == 400 and "reason is required" in no_reason.text


def test_blocking_needs_a_reason_and_is_recorded(api, live, tenant_b, make_token):
    session, base = _console_session(api, live, make_token)
    tenant = tenant_b["tenant"]
    page = session.get(f"{base}/console/tenants/{tenant}")
    csrf = _csrf(page.text)
    refused = session.post(f"{base}/console/tenants/{tenant}/status", data={"csrf_token": csrf, "status": "blocked"})
    assert refused.status_code == 400 and "reason" in refused.text
    assert api.get("/api/billing/wallet", tenant_b["admin"]).json()["wallet"]["status"] == "active"
    blocked = session.post(f"{base}/console/tenants/{tenant}/status",
                           data={"csrf_token": csrf, "status": "blocked", "reason": "chargeback"})
    assert blocked.status_code == 200 and "Done: block" in blocked.text
    assert api.get("/api/billing/wallet", tenant_b["admin"]).json()["wallet"]["status"] == "blocked"
    session.post(f"{base}/console/tenants/{tenant}/status",
                 data={"csrf_token": csrf, "status": "active", "reason": "resolved"})
    with tenant_b_engine(live).begin() as connection:
        recorded = connection.execute(text(
            "SELECT action, request->>'reason' FROM page_actions WHERE tenant_id = :t AND action LIKE '%block' "
            "ORDER BY created_at"),
            {"t": tenant}).all()
    assert [tuple(r) for r in recorded] == [("block", "chargeback"), ("unblock", "resolved")]


def test_operations_show_the_backlog_and_the_reconciliation_runs(api, live, tenant_b, make_token):
    from billing_core.ledger import reconciliation

    with UnitOfWork(tenant_b_engine(live)) as uow:
        reconciliation.reconcile(uow)  # this hour's run (or the one already recorded)
    with tenant_b_engine(live).begin() as connection:
        slot = connection.execute(text("SELECT max(slot) FROM reconciliation_runs")).scalar_one()
    session, base = _console_session(api, live, make_token)
    page = session.get(f"{base}/console/operations", timeout=30)
    assert page.status_code == 200
    runs = page.text.split('id="runs-table"')[1]
    assert slot.strftime("%Y-%m-%dT%H:%M") in runs and "No runs yet" not in runs


# --- security over plain HTTP -----------------------------------------------------------------------

def tenant_b_engine(live: Any) -> Any:
    return engine_for(live.env["DATABASE_URL"])


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', html).group(1)


def _opened(link: str) -> requests.Session:
    session = requests.Session()
    response = session.get(link, timeout=30)
    assert response.status_code == 200, response.text
    return session


def _console_session(api: Any, live: Any, make_token: Any) -> tuple[requests.Session, str]:
    link = console_link(api, make_token("ops", "billing.admin"))
    return _opened(link["url"]), f"http://127.0.0.1:{live.port}"


def test_tampered_expired_and_revoked_links_open_nothing(api, live, tenant_a, make_token):
    tokens = tenant_a["tokens"]
    link = portal_link(api, tokens["manage"])
    tenant = tenant_a["tenant"]
    tampered = [link["url"][:-2] + ("aa" if not link["url"].endswith("aa") else "bb"),
                link["url"].replace(tenant, tenant + "x"), link["url"].split("?")[0], link["url"] + "~"]
    for url in tampered:
        response = requests.get(url, timeout=30, allow_redirects=False)
        assert response.status_code == 401 and "lad_portal" not in response.headers.get("Set-Cookie", "")
        assert tenant_a["dear"]["totalCost"] not in response.text
    assert requests.get(f"http://127.0.0.1:{live.port}/portal/", timeout=30).status_code == 401

    expiring = portal_link(api, tokens["manage"], ttlMinutes=1)
    session = _opened(expiring["url"])
    with tenant_a["engine"].begin() as connection:
        connection.execute(text("UPDATE portal_sessions SET expires_at = now() - interval '1 second' "
                                "WHERE tenant_id = :t AND id = :id"), {"t": tenant, "id": expiring["id"]})
    assert session.get(expiring["url"].split("/open")[0] + "/", timeout=30).status_code == 401
    assert requests.get(expiring["url"], timeout=30).status_code == 401

    revoked = portal_link(api, tokens["manage"])
    session = _opened(revoked["url"])
    other = api.request("DELETE", f"/api/billing/portal-sessions/{revoked['id']}", tenant_b_token(make_token))
    assert other.status_code == 404, "another tenant cannot revoke it"
    assert session.get(revoked["url"].split("/open")[0] + "/", timeout=30).status_code == 200
    gone = api.request("DELETE", f"/api/billing/portal-sessions/{revoked['id']}", tokens["manage"])
    assert gone.status_code == 200, gone.text
    assert session.get(revoked["url"].split("/open")[0] + "/", timeout=30).status_code == 401
    assert requests.get(revoked["url"], timeout=30).status_code == 401

    # the console: a portal link is not a console link, and a revoked console session ends
    console = console_link(api, make_token("ops", "billing.admin"))
    assert requests.get(link["url"].replace("/portal/", "/console/"), timeout=30).status_code == 401
    session = _opened(console["url"])
    api.request("DELETE", f"/api/billing/console-sessions/{console['id']}", make_token("ops", "billing.admin"))
    assert session.get(console["url"].split("/open")[0] + "/", timeout=30).status_code == 401


def tenant_b_token(make_token: Any) -> str:
    return make_token(f"stranger-{uuid.uuid4().hex[:6]}", "billing.manage")


def test_who_may_open_sessions(api, tenant_a, make_token):
    tenant = tenant_a["tenant"]
    assert api.post("/api/billing/portal-sessions", make_token(tenant, "billing.view"), json={}).status_code == 403
    other = api.post("/api/billing/portal-sessions", make_token(tenant, "billing.manage"), json={"tenantId": "x"})
    assert other.status_code == 403, "billing.manage is for its own tenant only"
    named = api.post("/api/billing/portal-sessions", make_token("ops", "billing.admin"), json={"tenantId": tenant})
    assert named.status_code == 200 and "portal/open" in named.json()["portalSession"]["url"]
    assert api.post("/api/billing/console-sessions", make_token(tenant, "billing.manage"), json={}).status_code == 403
    for ttl in (0, 721, "60", True):
        bad = api.post("/api/billing/portal-sessions", make_token(tenant, "billing.manage"), json={"ttlMinutes": ttl})
        assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "ttlMinutes", bad.text
    assert api.post("/api/billing/portal-sessions", json={}).status_code == 401


def test_another_tenant_s_invoice_and_call_are_not_found(api, live, tenant_a, tenant_b):
    session = _opened(portal_link(api, tenant_a["tokens"]["manage"])["url"])
    base = f"http://127.0.0.1:{live.port}/portal"
    own = tenant_a["invoice"]["id"]
    assert session.get(f"{base}/invoices/{own}.pdf", timeout=30).status_code == 200
    assert session.get(f"{base}/invoices/{own}.csv", timeout=30).status_code == 200
    for path in (f"/invoices/{tenant_b['invoice_id']}.pdf", f"/invoices/{tenant_b['invoice_id']}.csv",
                 f"/usage/{tenant_b['event_id']}", "/usage/not-an-id", f"/invoices/{uuid.uuid4()}.pdf"):
        response = session.get(base + path, timeout=30)
        assert response.status_code == 404, (path, response.status_code)
        assert tenant_b["tenant"] not in response.text


def test_a_form_without_its_csrf_token_is_refused(api, live, tenant_a, make_token):
    link = portal_link(api, tenant_a["tokens"]["manage"])
    session = _opened(link["url"])
    base = f"http://127.0.0.1:{live.port}/portal"
    before = api.get("/api/billing/budgets", tenant_a["tokens"]["admin"]).json()["budgets"]
    for data in ({"featureKey": "speak", "limit": "1", "period": "day"},
                 {"featureKey": "speak", "limit": "1", "period": "day", "csrf_token": "0" * 64}):
        response = session.post(f"{base}/settings/budgets", data=data, timeout=30)
        assert response.status_code == 403, response.status_code
    # another session's token is not this session's
    stranger = _opened(portal_link(api, tenant_a["tokens"]["manage"])["url"])
    theirs = _csrf(stranger.get(f"{base}/settings", timeout=30).text)
    assert session.post(f"{base}/settings/budgets", timeout=30,
                        data={"featureKey": "speak", "limit": "1", "period": "day", "csrf_token": theirs}
                        ).status_code == 403
    assert api.get("/api/billing/budgets", tenant_a["tokens"]["admin"]).json()["budgets"] == before
    mine = _csrf(session.get(f"{base}/settings", timeout=30).text)
    for _ in range(2):  # the same change twice: one budget, as the API keeps it
        ok = session.post(f"{base}/settings/budgets", timeout=30,
                          data={"featureKey": "speak", "limit": "1.5", "period": "day", "csrf_token": mine})
        assert ok.status_code == 200 and "Saved: budgets" in ok.text
    budgets = api.get("/api/billing/budgets", tenant_a["tokens"]["admin"]).json()["budgets"]
    assert [(b["featureKey"], b["limit"], b["period"]) for b in budgets] == [("speak", "1.5", "day")]
    bad = session.post(f"{base}/settings/budgets", timeout=30,
                       data={"featureKey": "speak", "limit": "NaN", "period": "day", "csrf_token": mine})
    assert bad.status_code == 400 and "limit" in bad.text


def test_every_page_carries_the_security_headers(api, live, tenant_a, make_token):
    portal = _opened(portal_link(api, tenant_a["tokens"]["manage"])["url"])
    console, base = _console_session(api, live, make_token)
    pages = [(portal, f"{base}/portal{p}") for p in ("/", "/usage", "/invoices", "/settings", f"/usage/{uuid.uuid4()}")]
    pages += [(console, f"{base}/console{p}") for p in ("/", f"/tenants/{tenant_a['tenant']}", "/catalog", "/margins",
                                                         "/operations", "/tenants/nobody-here")]
    pages += [(requests.Session(), f"{base}/portal/"), (requests.Session(), f"{base}/console/open?token=x")]
    for session, url in pages:
        response = session.get(url, timeout=30)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp, url
        assert "frame-ancestors 'none'" in csp and response.headers["X-Frame-Options"] == "DENY", url
        assert response.headers["Cache-Control"] == "no-store" and response.headers["Referrer-Policy"] == "no-referrer"
        assert "<script>" not in response.text.replace(SCRIPT, ""), "no inline script"




def test_outside_development_the_cookies_are_secure_and_the_portal_s_embeddable(live, api, tenant_a, monkeypatch):
    from web.app import create_app
    from web.auth import TokenSettings

    monkeypatch.setenv("LAD_ENV", "production")
    monkeypatch.setenv("LAD_PUBLIC_URL", "https://billing.lad.example")  # required in production
    app = create_app({"LAD_TOKENS": TokenSettings("x" * 32, None, None, "lad-billing")})
    portal = portal_link(api, tenant_a["tokens"]["manage"])["url"].split("/portal/")[1]
    console = console_link(api, tenant_a["tokens"]["admin"])["url"].split("/console/")[1]
    with app.test_client() as client:
        opened = client.get(f"/portal/{portal}")
        assert opened.status_code == 303
        cookie = opened.headers["Set-Cookie"]
        for attribute in ("HttpOnly", "Secure", "SameSite=None", "Partitioned", "Path=/portal"):
            assert attribute in cookie, cookie
        cookie = client.get(f"/console/{console}").headers["Set-Cookie"]
        for attribute in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/console"):
            assert attribute in cookie, cookie
        assert "Partitioned" not in cookie


def test_links_name_the_public_address_when_it_is_set(live, tenant_a, monkeypatch):
    from tests.support.stack import TEST_SECRET
    from web.app import create_app
    from web.auth import TokenSettings

    monkeypatch.setenv("LAD_PUBLIC_URL", "https://billing.lad.example/")
    with create_app({"LAD_TOKENS": TokenSettings(TEST_SECRET, None, None, None)}).test_client() as client:
        response = client.post("/api/billing/portal-sessions", json={},
                               headers={"Authorization": f"Bearer {tenant_a['tokens']['manage']}"})
    assert response.status_code == 200, response.text
    assert response.json["portalSession"]["url"].startswith("https://billing.lad.example/portal/open?token=")


def test_make_console_prints_links_that_open_the_pages(live, monkeypatch, capsys):
    from devstack import console

    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PORT", str(live.port))
    monkeypatch.setenv("LAD_PUBLIC_URL", live.env["LAD_PUBLIC_URL"])  # as `make run` writes it in stack.env
    assert console.main(["--tenant", tenant, "--ttl-minutes", "5"]) == 0
    links = re.findall(r"(http://\S+/(?:console|portal)/open\?token=\S+)", capsys.readouterr().out)
    assert len(links) == 2
    for link in links:
        opened = requests.get(link, timeout=30)
        assert opened.status_code == 200 and opened.url.endswith(("/console/", "/portal/")), opened.url


def test_the_api_document_has_the_session_endpoints_and_not_the_pages(api):
    paths = set(api.get("/openapi.json").json()["paths"])
    assert {"/api/billing/portal-sessions", "/api/billing/portal-sessions/{session_id}",
            "/api/billing/console-sessions", "/api/billing/console-sessions/{session_id}"} <= paths
    assert not [p for p in paths if p.startswith(("/portal", "/console"))]


def test_the_chart_library_is_served_from_the_app_with_its_licence(api):
    vendored = ROOT / "web" / "static" / "vendor" / "chart.js"
    assert (vendored / "LICENSE.md").read_text().startswith("The MIT License")
    served = api.get("/static/vendor/chart.js/chart.umd.min.js")
    assert served.status_code == 200 and served.content == (vendored / "chart.umd.min.js").read_bytes()


# --- pages that show pricing (margins, costs, tiers) and auto top-up --------------------------------

@pytest.fixture(scope="module")
def priced(live: Any, make_token: Any) -> dict[str, Any]:
    """A tenant of its own charged today for a costed item, an uncosted one, and one call priced in
    graduated tiers and packages (PUT /pricing with pricingModel)."""
    from tests.support.pricing import TIERS, new_item, put_price

    api, tenant = live.api, f"margin-{uuid.uuid4().hex[:8]}"
    admin, charger = make_token(tenant, "billing.admin"), make_token(tenant, "billing.charge", "billing.view")
    top_up(api, admin, "50")
    costed, uncosted, graduated, package = new_item("llm"), new_item("tts"), new_item("llm"), new_item("stt")
    put_price(api, admin, costed, tenantId=tenant, unitPrice="0.002")
    put_price(api, admin, uncosted, tenantId=tenant, unitPrice="0.001")
    put_price(api, admin, graduated, tenantId=tenant, pricingModel="graduated", tiers=TIERS)
    put_price(api, admin, package, tenantId=tenant, pricingModel="package", packageSize="10", packagePrice="0.5")
    cost = api.request("PUT", "/api/billing/costs", admin, json={**costed, "unitCost": "0.0015"})
    assert cost.status_code == 200, cost.text
    events = [charge(api, charger, "agent", [{**costed, "quantity": "1000"}]),
              charge(api, charger, "campaign", [{**costed, "quantity": "2000"}]),
              charge(api, charger, "agent", [{**uncosted, "quantity": "1000"}])]
    tiered = charge(api, charger, "tiered", [{**graduated, "quantity": "1500"}, {**package, "quantity": "25"}])
    return {"tenant": tenant, "admin": admin, "manage": make_token(tenant, "billing.manage"), "costed": costed,
            "cost": cost.json()["cost"], "events": events + [tiered], "tiered": tiered, "graduated": graduated,
            "package": package}


@pytest.mark.browser
def test_console_margins_show_the_api_s_figures_and_the_costs_block(browser, api, priced, make_token):
    tenant, ops = priced["tenant"], make_token("ops", "billing.admin")
    days = sorted(e["createdAt"][:10] for e in priced["events"])
    period = {"from": days[0], "to": days[-1], "groupBy": "featureKey", "tenantId": tenant}
    expected = api.get("/api/billing/margins", ops, params=period).json()["margins"]
    # the test's own arithmetic: 3000 tokens at 0.002 cost 0.0015 each; the tts item has no cost
    assert (expected["revenue"], expected["cost"], expected["margin"]) == ("6", "4.5", "1.5")
    with Visit(browser, viewport={"width": 1280, "height": 900}) as v:
        page = v.page
        v.open(console_link(api, ops)["url"])
        v.click(page.get_by_role("link", name="Margins"))
        page.get_by_label("From").fill(period["from"])
        page.get_by_label("To (a date").fill(period["to"])
        page.get_by_label("By", exact=True).select_option("featureKey")
        page.get_by_label("Tenant").fill(tenant)
        v.click(page.get_by_role("button", name="Show"), "console-margins-by-feature")
        shown = {name: page.get_by_test_id(name).inner_text() for name in
                 ("revenue", "cost", "margin", "margin-percent", "uncosted-revenue", "uncosted-items")}
        assert shown == {"revenue": expected["revenue"], "cost": expected["cost"], "margin": expected["margin"],
                         "margin-percent": expected["marginPercent"] or "—",
                         "uncosted-revenue": expected["uncosted"]["revenue"],
                         "uncosted-items": str(expected["uncosted"]["items"])}
        rows = [row.locator("th, td").all_inner_texts() for row in page.locator("#margins-table tbody tr").all()]
        assert rows == [[g["key"], g["revenue"], g["cost"], g["margin"], g["marginPercent"] or "—", str(g["events"]),
                         g["uncostedRevenue"], str(g["uncostedItems"])] for g in expected["groups"]]
        assert {"agent", "campaign", "tiered"} == {r[0] for r in rows}

        # by tenant, the default: the tenant links to its page
        v.open(page.url.split("?")[0] + f"?from={period['from']}&to={period['to']}&tenantId={tenant}")
        assert page.locator("#margins-table tbody th a").all_inner_texts() == [tenant]
        # bad input: the API's validation error, named by field, and no figures
        v.open(page.url.split("?")[0] + "?from=yesterday", "console-margins-refused", status=400)
        assert "Field: from" in page.inner_text("main") and page.locator("#margins-table").count() == 0

        v.click(page.get_by_role("link", name="Catalog and costs"), "console-catalog-costs")
        row = page.locator("#costs-table tbody tr", has_text=priced["costed"]["model"])
        assert row.count() == 1
        cost = priced["cost"]
        assert row.locator("td").all_inner_texts() == [
            cost["category"], cost["provider"], cost["model"], cost["unit"], "0.0015", cost["currency"],
            cost["effectiveFrom"][:16].replace("T", " "), "open"]
        # the graduated price shows its tiers, the package price its package, as PUT /pricing set them
        graduated = page.locator("#prices-table tbody tr", has_text=priced["graduated"]["model"]).locator("xpath=./td")
        assert graduated.nth(4).inner_text() == "graduated"
        assert [r.locator("td").all_inner_texts() for r in graduated.nth(5).locator("tbody tr").all()] == [
            ["1000", "0.01"], ["5000", "0.005"], ["—", "0.001"]]
        package = page.locator("#prices-table tbody tr", has_text=priced["package"]["model"]).locator("xpath=./td")
        assert package.nth(4).inner_text() == "package" and package.nth(5).inner_text() == "0.5 per 10"
    listed = api.get("/api/billing/costs", ops, params={"model": priced["costed"]["model"]}).json()["costs"]
    assert [c["id"] for c in listed] == [cost["id"]]


@pytest.mark.browser
def test_a_call_priced_in_tiers_and_packages_shows_them(browser, api, priced):
    event_id = priced["tiered"]["id"]
    detail = api.get(f"/api/billing/usage/{event_id}", priced["admin"]).json()["usageEvent"]
    graduated, package = detail["items"]
    assert graduated["tiers"] == [{"quantity": "1000", "unitPrice": "0.01", "amount": "10"},
                                  {"quantity": "500", "unitPrice": "0.005", "amount": "2.5"}]
    assert package["packages"] == {"count": "3", "packageSize": "10", "packagePrice": "0.5", "amount": "1.5"}
    with Visit(browser, viewport=PHONE) as v:
        page = v.page
        v.open(portal_link(api, priced["manage"])["url"])
        v.open(page.url + f"usage/{event_id}", "portal-call-tiers-and-packages")
        columns = page.locator("#items-table > thead th").all_inner_texts()
        assert {"pricingModel", "billedQuantity", "tiers", "packages"} <= set(columns)
        rows = page.locator("#items-table > tbody > tr")
        tiers = rows.nth(0).locator("xpath=./td").nth(columns.index("tiers"))
        # a list of tiers is one small table: a column per field, a row per tier, exactly as the API gives them
        assert tiers.locator("thead th").all_inner_texts() == ["quantity", "unitPrice", "amount"]
        assert [r.locator("td").all_inner_texts() for r in tiers.locator("tbody tr").all()] == [
            ["1000", "0.01", "10"], ["500", "0.005", "2.5"]]
        packages = rows.nth(1).locator("xpath=./td").nth(columns.index("packages"))
        assert [(r.locator("th").inner_text(), r.locator("td").inner_text())
                for r in packages.locator("tr").all()] == list(package["packages"].items())
        assert rows.nth(0).locator("xpath=./td").nth(columns.index("pricingModel")).inner_text() == "graduated"


@pytest.mark.browser
def test_portal_auto_top_up_form_changes_the_rule(browser, api, live, make_token, stripe_client):
    from tests.support.auto_topup import own_card

    tenant = f"autotopup-{uuid.uuid4().hex[:8]}"
    admin, manage = make_token(tenant, "billing.admin"), make_token(tenant, "billing.manage")
    top_up(api, admin, "5")  # below the threshold about to be set: saving the rule tops it up at once
    assert api.get("/api/billing/settings/auto-topup", manage).status_code == 404
    link = portal_link(api, manage)
    with Visit(browser, viewport=PHONE) as v:
        page = v.page
        v.open(link["url"])
        v.click(page.get_by_role("link", name="Settings"))
        section = page.locator("#auto-topup-settings")
        assert "No auto top-up rule yet" in section.inner_text() and "No card saved yet" in section.inner_text()
        # "Add a card": the tenant's own Stripe customer and a SetupIntent, shown for Stripe.js to confirm
        v.click(page.get_by_role("button", name="Add a card"), "portal-settings-add-card")
        settings_url = page.url.split("/settings")[0] + "/settings"
        customer = page.get_by_test_id("card-setup-customer").inner_text()
        intent_id = page.get_by_test_id("card-setup-intent").inner_text()
        secret = page.get_by_test_id("card-setup-secret").inner_text()
        intent = stripe_client.v1.setup_intents.retrieve(intent_id)
        assert intent.customer == customer and intent.client_secret == secret
        assert stripe_client.v1.customers.retrieve(customer).metadata.to_dict() == {"tenantId": tenant}
        card = own_card(api, manage, stripe_client)  # confirmed where Stripe.js runs; the same customer
        assert card[0] == customer
        v.open(settings_url)
        assert card[1] in page.locator("#cards-list").inner_text()
        page.get_by_label("When the available balance is at or below").fill("10")
        page.get_by_label("Top up to this available balance").fill("50")
        page.get_by_label("Or top up by this fixed amount").fill("5")
        page.get_by_label("Card to charge").select_option(card[1])
        # both a target and a fixed amount: the API's validation error, shown on the page, nothing saved
        with page.expect_navigation() as navigation:
            page.get_by_role("button", name="Save auto top-up").click()
        assert navigation.value.status == 400
        v.checked(navigation.value, "portal-auto-topup-refused")
        assert "Field: rechargeTo" in page.inner_text("main")
        assert page.get_by_label("Or top up by this fixed amount").input_value() == "5", "what was typed stays"
        assert api.get("/api/billing/settings/auto-topup", manage).status_code == 404

        page.get_by_label("Or top up by this fixed amount").fill("")
        page.get_by_label("At most this much a month").fill("200")
        v.click(page.get_by_role("button", name="Save auto top-up"))
        assert "Saved: auto top-up" in page.inner_text("main")
        rule = api.get("/api/billing/settings/auto-topup", manage).json()["autoTopup"]
        assert (rule["enabled"], rule["threshold"], rule["rechargeTo"], rule["amount"], rule["maxPerMonth"],
                rule["cooldownSeconds"], rule["stripeCustomerId"], rule["stripePaymentMethodId"]) == (
            True, "10", "50", None, "200", 300, card[0], card[1])
        # the balance was at 5: saving the rule topped it up to 50, which the page then shows as spent
        eventually(lambda: api.get("/api/billing/settings/auto-topup", manage)
                   .json()["autoTopup"]["spentThisMonth"] == "45", what="the top-up")
        v.open(page.url.split("?")[0], "portal-settings-auto-topup")
        assert page.get_by_test_id("auto-topup-status").inner_text() == "active"
        assert page.get_by_test_id("auto-topup-spent").inner_text() == "45"
        assert page.get_by_label("Top up to this available balance").input_value() == "50"

        page.get_by_label("On (saving it on").uncheck()
        v.click(page.get_by_role("button", name="Save auto top-up"))
        assert page.get_by_test_id("auto-topup-status").inner_text() == "disabled"
        assert page.get_by_test_id("auto-topup-disabled-reason").inner_text() == "disabled by an administrator"
    rule = api.get("/api/billing/settings/auto-topup", manage).json()["autoTopup"]
    assert rule["enabled"] is False and rule["disabledReason"] == "disabled by an administrator"

    # the console's tenant page lists the attempt as GET /auto-topups gives it
    attempt = api.get(f"/api/billing/auto-topups?tenantId={tenant}", admin).json()["autoTopups"][0]
    with Visit(browser, viewport={"width": 1280, "height": 900}) as v:
        v.open(console_link(api, make_token("ops", "billing.admin"))["url"])
        v.open(v.page.url + f"tenants/{tenant}", "console-tenant-auto-topups")
        cells = v.page.locator("#auto-topups-table tbody tr").first.locator("td").all_inner_texts()
        assert cells[1:5] == ["succeeded", "45", "5", attempt["paymentIntentId"]]

    # without its CSRF token the form is refused and nothing changes; the same form twice is one rule
    session, base = _opened(portal_link(api, manage)["url"]), f"http://127.0.0.1:{live.port}/portal"
    form = {"enabled": "on", "threshold": "3", "rechargeTo": "20", "stripeCustomerId": card[0],
            "stripePaymentMethodId": card[1]}
    assert session.post(f"{base}/settings/auto-topup", data=form, timeout=30).status_code == 403
    assert api.get("/api/billing/settings/auto-topup", manage).json()["autoTopup"]["threshold"] == "10"
    form["csrf_token"] = _csrf(session.get(f"{base}/settings", timeout=30).text)
    for _ in range(2):
        saved = session.post(f"{base}/settings/auto-topup", data=form, timeout=30)
        assert saved.status_code == 200 and "Saved: auto top-up" in saved.text
    rule = api.get("/api/billing/settings/auto-topup", manage).json()["autoTopup"]
    assert (rule["enabled"], rule["threshold"], rule["rechargeTo"], rule["disabledReason"]) == (True, "3", "20", None)
    bad = session.post(f"{base}/settings/auto-topup", timeout=30, data={**form, "cooldownSeconds": "soon"})
    assert bad.status_code == 400 and "cooldownSeconds" in bad.text
    with tenant_b_engine(live).begin() as connection:
        recorded = connection.execute(text(
            "SELECT request->>'threshold' FROM page_actions WHERE tenant_id = :t AND action = 'auto_topup.put' "
            "ORDER BY created_at"), {"t": tenant}).scalars().all()
    assert recorded == ["10", "10", "3", "3"]


def test_without_stripe_the_portal_says_auto_top_up_is_unavailable(live, api, tenant_a):

    from billing_core.bootstrap import Settings
    from tests.support.stack import TEST_SECRET
    from web.app import create_app
    from web.auth import TokenSettings

    settings = Settings().model_copy(update={"stripe_secret_key": None})
    app = create_app({"LAD_TOKENS": TokenSettings(TEST_SECRET, None, None, None), "LAD_SETTINGS": settings})
    opening = portal_link(api, tenant_a["tokens"]["manage"])["url"].split("/portal/")[1]
    with app.test_client() as client:
        assert client.get(f"/portal/{opening}").status_code == 303
        page = client.get("/portal/settings")
        assert page.status_code == 200 and "Auto top-up is unavailable" in page.text
        assert 'action="/portal/settings/auto-topup"' not in page.text
        csrf = _csrf(page.text)
        refused = client.post("/portal/settings/auto-topup", data={"csrf_token": csrf, "threshold": "1"})
        assert refused.status_code == 503 and "Auto top-up is unavailable" in refused.text


# --- issue 25: links open once, switching tenants asks, pages share the rate limits, fixed notices ----

def _link_token(url: str) -> str:
    return url.split("token=", 1)[1]


def test_a_link_opens_once_and_then_says_to_ask_for_a_new_one(api, live, tenant_a, make_token):
    """Finding 4: the first opening exchanges the link for a session secret of its own (the cookie); a
    second opening of the same link, from anywhere, is 410 and sets nothing."""
    link = portal_link(api, tenant_a["tokens"]["manage"])
    first = _opened(link["url"])
    cookie = first.cookies.get("lad_portal")
    assert cookie and cookie.startswith(tenant_a["tenant"] + "~")
    assert _link_token(link["url"]).split("~")[1] not in cookie, "the cookie is not the link's token"
    again = requests.get(link["url"], timeout=30, allow_redirects=False)
    assert again.status_code == 410 and "ask for a new link" in again.text.lower()
    assert "Set-Cookie" not in again.headers and tenant_a["dear"]["totalCost"] not in again.text
    assert first.get(link["url"], timeout=30).status_code == 410, "not even in the browser that opened it"
    base = f"http://127.0.0.1:{live.port}"
    assert first.get(f"{base}/portal/", timeout=30).status_code == 200, "the session itself goes on"
    # the link's token is no cookie either
    assert requests.get(f"{base}/portal/", cookies={"lad_portal": _link_token(link["url"])},
                        timeout=30).status_code == 401

    console = console_link(api, make_token("ops", "billing.admin"))
    opened = _opened(console["url"])
    assert opened.cookies.get("lad_console") != _link_token(console["url"])
    assert requests.get(console["url"], timeout=30).status_code == 410
    assert opened.get(f"{base}/console/", timeout=30).status_code == 200


@pytest.mark.browser
def test_a_link_of_another_tenant_asks_before_replacing_the_open_portal(browser, api, live, tenant_a, tenant_b,
                                                                        make_token):
    """Finding 3: with tenant A's portal open, following a link of tenant B (an attacker's, say) shows a
    confirmation; switching takes a POST carrying the open session's CSRF token."""
    base = f"http://127.0.0.1:{live.port}/portal"
    session = _opened(portal_link(api, tenant_a["tokens"]["manage"])["url"])
    theirs = portal_link(api, make_token(tenant_b["tenant"], "billing.manage"))
    asked = session.get(theirs["url"], timeout=30, allow_redirects=False)
    assert asked.status_code == 200 and "Open another tenant's portal?" in asked.text
    assert tenant_b["tenant"] in asked.text and "Set-Cookie" not in asked.headers
    assert f"<strong>{tenant_a['tenant']}</strong>" in session.get(f"{base}/", timeout=30).text
    token = re.search(r'name="token" value="([^"]+)"', asked.text).group(1)
    for data in ({"token": token}, {"token": token, "csrf_token": "0" * 64}):
        assert session.post(f"{base}/open", data=data, timeout=30).status_code == 403
    assert f"<strong>{tenant_a['tenant']}</strong>" in session.get(f"{base}/", timeout=30).text
    switched = session.post(f"{base}/open", data={"token": token, "csrf_token": _csrf(asked.text)}, timeout=30)
    assert switched.status_code == 200 and f"<strong>{tenant_b['tenant']}</strong>" in switched.text
    # a link of the tenant already open opens without asking
    same = session.get(portal_link(api, make_token(tenant_b["tenant"], "billing.manage"))["url"], timeout=30)
    assert same.status_code == 200 and "Open another tenant's portal?" not in same.text

    with Visit(browser, viewport=PHONE) as v:  # the confirmation is a page like the others (axe, CSP)
        v.open(portal_link(api, tenant_a["tokens"]["manage"])["url"])
        v.open(portal_link(api, make_token(tenant_b["tenant"], "billing.manage"))["url"], "portal-switch-asks")
        v.click(v.page.get_by_role("button", name=f"Open the portal of {tenant_b['tenant']}"))
        assert tenant_b["tenant"] in v.page.inner_text("header")


def test_pages_count_in_the_tenants_rate_limit_buckets(api, live, make_token):
    """Finding 6: portal reads spend the tenant's billing.view bucket, its forms the billing.manage one.
    A tenant of its own: its buckets had no earlier window whose counts could fade meanwhile."""
    tenant, base = f"limits-{uuid.uuid4().hex[:8]}", f"http://127.0.0.1:{live.port}/portal"
    view, manage = make_token(tenant, "billing.view"), make_token(tenant, "billing.manage")
    top_up(api, make_token(tenant, "billing.admin"), "5")
    session = _opened(portal_link(api, manage)["url"])

    def remaining(response: requests.Response) -> int:
        assert response.status_code == 200, response.text
        return int(response.headers["X-RateLimit-Remaining"])

    before = remaining(api.get("/api/billing/wallet", view))
    for path in ("/", "/usage?days=90", "/usage?days=90&by=category", "/invoices", "/settings"):
        assert session.get(base + path, timeout=30).status_code == 200
    # 5 pages and this request; a window boundary passed meanwhile may fade the count by one
    assert before - remaining(api.get("/api/billing/wallet", view)) >= 5
    assert int(session.get(base + "/", timeout=30).headers["X-RateLimit-Remaining"]) < before - 5

    budget = {"limit": "9", "period": "month"}
    before = remaining(api.request("PUT", "/api/billing/budgets/pages-count", manage, json=budget))
    csrf = _csrf(session.get(f"{base}/settings", timeout=30).text)
    for _ in range(3):
        saved = session.post(f"{base}/settings/budgets", timeout=30,
                             data={"featureKey": "pages-count", "limit": "9", "period": "month", "csrf_token": csrf})
        assert saved.status_code == 200
    after = remaining(api.request("PUT", "/api/billing/budgets/pages-count", manage, json=budget))
    assert before - after >= 3  # 3 forms and this request (the pages they land on are reads), less a fade


def test_notices_come_from_fixed_keys_never_from_the_address(api, live, tenant_a, make_token):
    """Finding 8: ?saved= and ?done= name a message; any other text in them shows nothing."""
    base = f"http://127.0.0.1:{live.port}"
    forged = "Your account is suspended: call +1 555 0100"
    portal = _opened(portal_link(api, tenant_a["tokens"]["manage"])["url"])
    page = portal.get(f"{base}/portal/settings", params={"saved": forged}, timeout=30)
    assert page.status_code == 200 and "suspended" not in page.text and 'class="notice"' not in page.text
    assert "Saved: alerts." in portal.get(f"{base}/portal/settings?saved=alerts", timeout=30).text
    console, _ = _console_session(api, live, make_token)
    page = console.get(f"{base}/console/tenants/{tenant_a['tenant']}", params={"done": forged}, timeout=30)
    assert page.status_code == 200 and "suspended" not in page.text and "Done:" not in page.text
    assert "Done: block." in console.get(f"{base}/console/tenants/{tenant_a['tenant']}?done=block", timeout=30).text


def test_a_call_whose_metadata_mixes_objects_and_text_shows_them_all(api, live, tenant_a):
    """Finding 9: a list whose first element is an object but not all are was a 500."""
    event = charge(api, tenant_a["tokens"]["charge"], "mixed", stt_items("10"),
                   metadata={"x": [{"a": 1}, "str", [2, {"b": "c"}]], "y": [{"a": 1}, {"z": 2}]})
    session = _opened(portal_link(api, tenant_a["tokens"]["manage"])["url"])
    page = session.get(f"http://127.0.0.1:{live.port}/portal/usage/{event['id']}", timeout=30)
    assert page.status_code == 200, page.text[:300]
    metadata = page.text.split('id="metadata"')[1]
    assert "str" in metadata and ">c<" in metadata and ">z<" in metadata


def test_the_portal_refuses_what_the_api_refuses_and_removes_what_it_created(api, live, tenant_a):
    """Finding 9: a cooldown of "²" (a digit to str.isdigit, not to int) was a 500; a budget for a feature key
    with "/" could be set from the portal and then removed neither there nor through the API."""
    tokens, base = tenant_a["tokens"], f"http://127.0.0.1:{live.port}/portal"
    session = _opened(portal_link(api, tokens["manage"])["url"])
    csrf = _csrf(session.get(f"{base}/settings", timeout=30).text)
    for cooldown in ("²", "٣", "1e3", "-5"):
        bad = session.post(f"{base}/settings/auto-topup", timeout=30, data={
            "csrf_token": csrf, "enabled": "on", "threshold": "1", "rechargeTo": "5", "cooldownSeconds": cooldown,
            "stripePaymentMethodId": "pm_none"})
        assert bad.status_code == 400 and "Field: <code>cooldownSeconds</code>" in bad.text, (cooldown, bad.status_code)

    def budgets() -> list[str]:
        return [b["featureKey"] for b in api.get("/api/billing/budgets", tokens["admin"]).json()["budgets"]]

    for key in ("voice agent", "x" * 65, "voice?agent"):  # what the API's path refuses, the form refuses
        refused = session.post(f"{base}/settings/budgets", timeout=30,
                               data={"featureKey": key, "limit": "1", "period": "day", "csrf_token": csrf})
        assert refused.status_code == 400 and "Field: <code>featureKey</code>" in refused.text, key
        api_refused = api.request("PUT", "/api/billing/budgets/" + requests.utils.quote(key, safe=""),
                                  tokens["manage"], json={"limit": "1", "period": "day"})
        assert api_refused.status_code == 400 and api_refused.json()["error"]["details"]["field"] == "featureKey"
    saved = session.post(f"{base}/settings/budgets", timeout=30,
                         data={"featureKey": "voice/agent", "limit": "1", "period": "day", "csrf_token": csrf})
    assert saved.status_code == 200 and "voice/agent" in budgets()
    removed = session.post(f"{base}/settings/budgets/delete", timeout=30,
                           data={"featureKey": "voice/agent", "csrf_token": csrf})
    assert removed.status_code == 200 and "Removed the budget." in removed.text and "voice/agent" not in budgets()
    # and the API, with the "/" escaped or not
    for path in ("voice%2Fagent", "voice/agent"):
        put = api.request("PUT", f"/api/billing/budgets/{path}", tokens["manage"], json={"limit": "2", "period": "day"})
        assert put.status_code == 200 and put.json()["budget"]["featureKey"] == "voice/agent", put.text
        assert api.request("DELETE", f"/api/billing/budgets/{path}", tokens["manage"]).status_code == 200
        assert "voice/agent" not in budgets()


@pytest.mark.browser
def test_an_agency_s_portal_lists_its_sub_accounts_with_their_margins(browser, api, make_token):
    agency = f"agency-{uuid.uuid4().hex[:8]}"
    admin, manage = make_token(agency, "billing.admin"), make_token(agency, "billing.manage")
    assert api.request("PATCH", "/api/billing/wallet", admin, json={"reseller": True}).status_code == 200
    top_up(api, admin, "10")
    made = api.post("/api/billing/sub-accounts", manage, json={"name": "client-1", "funding": "prepaid"})
    sub = made.json()["subAccount"]["tenantId"]
    api.request("PUT", "/api/billing/sub-accounts/prices", manage, json={"multiplier": "1.5"})
    api.post(f"/api/billing/sub-accounts/{sub}/topups", manage, json={"amount": "5", "idempotencyKey": "t"})
    charge(api, make_token(sub, "billing.charge", "billing.view"), "transcribe", stt_items("10000"))
    with Visit(browser, viewport=PHONE) as v:
        page = v.page
        v.open(portal_link(api, manage, ttlMinutes=30)["url"])
        v.click(page.get_by_role("link", name="Sub-accounts", exact=True), "portal-sub-accounts")
        row = page.locator("#sub-accounts-table tbody tr").first
        assert row.locator("th").inner_text() == sub
        assert row.locator("td").all_inner_texts() == ["active", "prepaid", "3.5", "1", "1.5", "1", "0.5"]
    # a sub-account's portal carries its agency's name (not LAD's), has no such page, and never the agency's price
    details = {"legalName": "Acme Voice Agency Ltd", "address": "1 Agency Road"}
    assert api.request("PUT", "/api/billing/settings/billing-details", manage, json=details).status_code == 200
    with Visit(browser, viewport=PHONE) as v:
        v.open(portal_link(api, make_token(sub, "billing.manage"), ttlMinutes=30)["url"])
        assert v.page.get_by_role("link", name="Sub-accounts").count() == 0
        assert v.page.locator(".brand").inner_text().startswith("Acme Voice Agency Ltd")
        assert "LAD" not in v.page.locator("body").inner_text()
        v.open(v.page.url.rstrip("/") + "/sub-accounts", status=404)
