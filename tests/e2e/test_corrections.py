"""Corrections over HTTP (issue 20): late usage's occurredAt, and a void and an amend of one event."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from tests.support.helpers import assert_ledger_consistent, stt_items, top_up, wallet


def _charge(api, token, seconds, **extra):  # noqa: ANN001, ANN003, ANN202
    return api.post("/api/billing/charge", token, json={"featureKey": "calls", "items": stt_items(seconds),
                                                        "idempotencyKey": f"c-{uuid.uuid4()}", **extra})


def _iso(delta: timedelta) -> str:
    return (datetime.now(timezone.utc) + delta).isoformat()


def test_occurred_at_is_shown_and_refused_in_the_future_or_too_old(api, tokens):
    top_up(api, tokens["admin"], "10")
    for refused in (_iso(timedelta(hours=1)), _iso(-timedelta(days=40))):
        response = _charge(api, tokens["charge"], "100", occurredAt=refused)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "validation_error"
        assert response.json()["error"]["details"]["field"] == "occurredAt"
    occurred = _iso(-timedelta(days=2))
    response = _charge(api, tokens["charge"], "100", occurredAt=occurred)
    assert response.status_code == 200, response.text
    event = response.json()["usageEvent"]
    assert datetime.fromisoformat(event["occurredAt"].replace("Z", "+00:00")) == datetime.fromisoformat(occurred)
    assert event["occurredAt"] != event["createdAt"]


def test_a_void_and_an_amend_of_one_event_over_http(api, tokens, make_token, tenant):
    top_up(api, tokens["admin"], "10")
    response = _charge(api, tokens["charge"], "20000")  # 2
    assert response.status_code == 200, response.text
    event_id = response.json()["usageEvent"]["id"]
    path = f"/api/billing/usage/{event_id}/corrections"
    assert api.post(path, tokens["charge"], json={"action": "void", "reason": "x",
                                                 "idempotencyKey": "v"}).status_code == 403
    body = {"action": "amend", "items": stt_items("5000"), "reason": "the call was shorter",
            "idempotencyKey": f"a-{uuid.uuid4()}"}
    first = api.post(path, tokens["admin"], json=body)
    assert first.status_code == 200, first.text
    correction = first.json()["correction"]
    assert (correction["action"], Decimal(correction["difference"])) == ("amend", Decimal("1.5"))
    assert correction["transaction"]["type"] == "correction"
    again = api.post(path, tokens["admin"], json=body)  # the same correction twice posts once
    assert again.json()["correction"]["id"] == correction["id"]
    assert Decimal(wallet(api, tokens["admin"])["currentBalance"]) == Decimal("9.5")
    void = api.post(path, tokens["admin"], json={"action": "void", "reason": "test call",
                                                "idempotencyKey": f"v-{uuid.uuid4()}"})
    assert Decimal(void.json()["correction"]["difference"]) == Decimal("0.5")
    detail = api.get(f"/api/billing/usage/{event_id}", tokens["view"]).json()["usageEvent"]
    assert [c["action"] for c in detail["corrections"]] == ["amend", "void"]
    assert Decimal(detail["netCost"]) == 0 and Decimal(detail["totalCost"]) == 2
    assert Decimal(wallet(api, tokens["admin"])["currentBalance"]) == Decimal("10")
    # the margins see the corrected numbers: the usage line as charged, the corrections beside it
    ops = make_token("ops", "billing.admin")
    month = api.get(f"/api/billing/invoices/margins?tenantId={tenant}", ops).json()["invoiceMargins"]
    assert Decimal(month["corrections"]) == 2 and Decimal(month["lines"][0]["exactAmount"]) == 2
    margins = api.get(f"/api/billing/margins?tenantId={tenant}", ops).json()["margins"]
    assert Decimal(margins["corrections"]) == 2
    assert Decimal(margins["revenue"]) + Decimal(margins["uncosted"]["revenue"]) == 0
    missing = api.post(f"/api/billing/usage/{uuid.uuid4()}/corrections", tokens["admin"],
                       json={**body, "idempotencyKey": "m"})
    assert missing.status_code == 404
    no_items = api.post(path, tokens["admin"], json={"action": "amend", "reason": "r", "idempotencyKey": "n"})
    assert no_items.status_code == 400 and no_items.json()["error"]["details"]["field"] == "items"
    assert_ledger_consistent(api, make_token, tenant)


def test_a_price_fixed_in_the_past_is_re_rated_by_a_worker_once(api, tokens, make_token, tenant, clock):
    from tests.support.polling import eventually
    from tests.support.pricing import new_item

    admin = tokens["admin"]
    item = new_item()
    top_up(api, admin, "100")
    wrong = api.request("PUT", "/api/billing/pricing", admin, json={**item, "unitPrice": "0.02"})
    assert wrong.status_code == 200, wrong.text
    start = wrong.json()["price"]["effectiveFrom"]
    for _ in range(5):
        response = api.post("/api/billing/charge", tokens["charge"], json={
            "featureKey": "calls", "items": [{**item, "quantity": "100"}], "idempotencyKey": f"c-{uuid.uuid4()}"})
        assert response.status_code == 200, response.text  # 2 each
    clock.advance(3600)
    fix = {**item, "unitPrice": "0.01", "effectiveFrom": start}
    refused = api.request("PUT", "/api/billing/pricing", admin, json=fix)
    assert refused.status_code == 400 and refused.json()["error"]["details"]["field"] == "effectiveFrom"
    fixed = api.request("PUT", "/api/billing/pricing", admin, json={**fix, "correctionReason": "a digit too many"})
    assert fixed.status_code == 200, fixed.text
    scope = {"from": start, "to": _iso(timedelta(days=1)), "tenantId": tenant, "model": item["model"]}
    dry = api.post("/api/billing/rerates", admin, json={**scope, "dryRun": True})
    assert dry.status_code == 200, dry.text
    assert dry.json()["rerate"]["status"] == "dry_run"
    assert [(t["tenantId"], t["events"], Decimal(t["difference"])) for t in dry.json()["rerate"]["tenants"]] == \
        [(tenant, 5, Decimal(5))]
    body = {**scope, "dryRun": False, "idempotencyKey": f"rr-{uuid.uuid4()}"}
    started = api.post("/api/billing/rerates", admin, json=body)
    assert started.status_code == 202, started.text
    assert started.json()["rerate"]["status"] == "running"
    rerate_id = started.json()["rerate"]["id"]
    done = eventually(lambda: api.get(f"/api/billing/rerates/{rerate_id}", admin).json()["rerate"],
                      until=lambda r: r["status"] != "running", what="the re-rate")
    assert done["status"] == "completed" and Decimal(done["difference"]) == 5
    again = api.post("/api/billing/rerates", admin, json=body)  # the same key: that run, nothing more
    assert again.json()["rerate"]["id"] == rerate_id
    assert Decimal(wallet(api, admin)["currentBalance"]) == Decimal("95")
    corrections = api.get("/api/billing/transactions?type=correction", admin).json()["transactions"]
    assert [Decimal(t["amount"]) for t in corrections] == [Decimal(5)]
    assert_ledger_consistent(api, make_token, tenant)


def _console(api, live, make_token):  # noqa: ANN001, ANN202
    import requests

    link = api.post("/api/billing/console-sessions", make_token("ops", "billing.admin"), json={"ttlMinutes": 30})
    assert link.status_code == 200, link.text
    session = requests.Session()
    assert session.get(link.json()["consoleSession"]["url"], timeout=30).status_code == 200
    return session, f"http://127.0.0.1:{live.port}"


def _field(html: str, name: str) -> str:
    import re

    return re.search(rf'name="{name}" value="([^"]+)"', html).group(1)


def test_the_console_dry_runs_then_applies_a_rerate_and_voids_an_event(api, live, tokens, make_token, tenant, clock):
    from tests.support.polling import eventually
    from tests.support.pricing import new_item

    admin = tokens["admin"]
    item = new_item()
    top_up(api, admin, "100")
    wrong = api.request("PUT", "/api/billing/pricing", admin, json={**item, "unitPrice": "0.03"})
    start = wrong.json()["price"]["effectiveFrom"]
    events = [api.post("/api/billing/charge", tokens["charge"], json={
        "featureKey": "calls", "items": [{**item, "quantity": "100"}], "idempotencyKey": str(uuid.uuid4())}
    ).json()["usageEvent"]["id"] for _ in range(3)]  # 3 each
    clock.advance(3600)
    assert api.request("PUT", "/api/billing/pricing", admin, json={
        **item, "unitPrice": "0.01", "effectiveFrom": start, "correctionReason": "typo"}).status_code == 200
    session, base = _console(api, live, make_token)
    scope = {"from": start, "to": _iso(timedelta(days=1)), "tenantId": tenant, "model": item["model"]}
    page = session.get(f"{base}/console/rerates", params={**scope, "dry": "1"})
    assert page.status_code == 200, page.text
    html = page.text
    assert html.index('id="rerate-table"') < html.index("Apply: post these differences")  # the table first
    assert tenant in html and ">6<" in html.replace('<span class="num">', ">").replace("</span>", "<")
    form = {"csrf_token": _field(html, "csrf_token"), "idempotencyKey": _field(html, "idempotencyKey"), **scope}
    applied = session.post(f"{base}/console/rerates", data=form)
    assert applied.status_code == 200 and "Re-rate" in applied.text
    rerate_url = applied.url
    eventually(lambda: "completed" in session.get(rerate_url).text, what="the re-rate completed")
    assert session.post(f"{base}/console/rerates", data=form).url == rerate_url  # a double submit: one run
    assert Decimal(wallet(api, admin)["currentBalance"]) == Decimal("97")  # 100 - 9 + 6

    event_page = session.get(f"{base}/console/tenants/{tenant}/usage/{events[0]}").text
    voided = session.post(f"{base}/console/tenants/{tenant}/usage/{events[0]}/void", data={
        "csrf_token": _field(event_page, "csrf_token"), "idempotencyKey": _field(event_page, "idempotencyKey"),
        "reason": "test call"})
    assert voided.status_code == 200 and "test call" in voided.text
    detail = api.get(f"/api/billing/usage/{events[0]}", tokens["view"]).json()["usageEvent"]
    assert Decimal(detail["netCost"]) == 0 and [c["action"] for c in detail["corrections"]] == ["void"]
    assert Decimal(wallet(api, admin)["currentBalance"]) == Decimal("98")
    assert_ledger_consistent(api, make_token, tenant)

    # the tenant sees the correction on the call in its portal
    import requests

    link = api.post("/api/billing/portal-sessions", make_token(tenant, "billing.manage"), json={})
    assert link.status_code == 200, link.text
    portal = requests.Session()
    assert portal.get(link.json()["portalSession"]["url"], timeout=30).status_code == 200
    call = portal.get(f"{base}/portal/usage/{events[0]}", timeout=30)
    assert call.status_code == 200 and 'id="corrections-table"' in call.text and "test call" in call.text


def test_a_call_statement_shows_original_correction_and_net(api, tokens, make_token, tenant):
    top_up(api, tokens["admin"], "10")
    reference = f"call-{uuid.uuid4().hex[:8]}"
    ids = [_charge(api, tokens["charge"], "10000", externalReferenceId=reference).json()["usageEvent"]["id"]
           for _ in range(2)]  # 1 each
    voided = api.post(f"/api/billing/usage/{ids[1]}/corrections", tokens["admin"], json={
        "action": "void", "reason": "dropped at once", "idempotencyKey": f"v-{uuid.uuid4()}"})
    assert voided.status_code == 200, voided.text
    call = api.get(f"/api/billing/calls/{reference}", tokens["view"]).json()["call"]
    assert (Decimal(call["totalCost"]), Decimal(call["corrections"]), Decimal(call["netCost"])) == (2, 1, 1)
    assert Decimal(call["ledgerTotal"]) == -1  # the debits and the void's correction entry
    assert "correction" in [e["type"] for e in call["entries"]]
