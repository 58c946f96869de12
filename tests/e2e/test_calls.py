"""Calls (issue 19) on the real stack: concurrency limits decided at admission under the wallet lock,
burst slots at a multiplier, admitted calls that always settle (debt, freeze, repayment), and the
statement of one call."""
from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import requests
from sqlalchemy import text

from tests.support.helpers import assert_ledger_consistent, stt_items, top_up, wallet
from tests.support.notifications import configure

R = "/api/billing/reservations"
W = "/api/billing/wallet"


def plan(api, admin, **fields):
    response = api.request("PATCH", W, admin, json=fields)
    assert response.status_code == 200, response.text
    return response.json()["wallet"]


def reserve(api, token, amount="1", *, ttl=900, feature="voice-call", **extra):
    return api.post(R, token, json={"featureKey": feature, "amount": amount, "ttlSeconds": ttl,
                                    "idempotencyKey": f"hold-{uuid.uuid4()}", **extra})


def settle(api, token, reservation_id, seconds, *, feature="voice-call", **extra):
    """A settlement: stt seconds at 0.0001 each, naming the hold."""
    return api.post("/api/billing/charge", token, json={
        "featureKey": feature, "items": stt_items(seconds), "reservationId": reservation_id,
        "idempotencyKey": f"settle-{uuid.uuid4()}", **extra})


def many_holds(api, token, count):
    with ThreadPoolExecutor(max_workers=25) as pool:
        return list(pool.map(lambda _: reserve(api, token, "0.1"), range(count)))


def sum_of_entries(engine, tenant):
    with engine.connect() as connection:
        return connection.execute(text("SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE tenant_id = :t"),
                                  {"t": tenant}).scalar_one()


def books_balance(api, engine, tenant, admin):
    """/ledger/verify is clean and the sum of the tenant's entries is its balance."""
    verified = api.get(f"/api/billing/ledger/verify?tenantId={tenant}", admin).json()
    assert verified["ok"], verified
    assert sum_of_entries(engine, tenant) == Decimal(wallet(api, admin)["currentBalance"])


def test_a_hundred_simultaneous_holds_against_a_limit_of_ten_admit_exactly_ten(api, tokens, tenant, make_token,
                                                                             clock):
    top_up(api, tokens["admin"], "100")
    changed = plan(api, tokens["admin"], maxConcurrentCalls=10)
    assert changed["callPlan"]["maxConcurrentCalls"] == 10
    assert changed["calls"] == {"limit": 10, "burstLimit": None, "active": 0, "remaining": 10}
    answers = many_holds(api, tokens["charge"], 100)
    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(admitted) == 10 and len(refused) == 90, [a.text for a in answers if a.status_code not in (200, 429)]
    assert {r.json()["error"]["code"] for r in refused} == {"concurrency_limit"}
    assert {(r.json()["error"]["details"]["limit"], r.json()["error"]["details"]["active"]) for r in refused} == {
        (10, 10)}
    assert sorted(a.json()["concurrency"]["active"] for a in admitted) == list(range(1, 11))
    assert all(not a.json()["reservation"]["burst"] for a in admitted)
    assert wallet(api, tokens["any"])["calls"] == {"limit": 10, "burstLimit": None, "active": 10, "remaining": 0}
    entitled = api.get("/api/billing/entitlement?featureKey=voice-call", tokens["view"]).json()
    assert entitled["entitlement"] == {"allowed": False, "availableBalance": "99", "reason": "concurrency_limit"}
    assert entitled["concurrency"]["remaining"] == 0

    holds = [a.json()["reservation"]["id"] for a in admitted]
    for hold in holds[:5]:
        assert settle(api, tokens["charge"], hold, "500").status_code == 200
    expire(clock, holds[5:7])
    again = many_holds(api, tokens["charge"], 30)
    assert sum(a.status_code == 200 for a in again) == 7
    assert {a.json()["error"]["code"] for a in again if a.status_code != 200} == {"concurrency_limit"}
    assert wallet(api, tokens["any"])["calls"]["active"] == 10
    assert_ledger_consistent(api, make_token, tenant)


def expire(clock, hold_ids):
    """Expire these holds by the clock, not by sleeping: their TTL ends a second from now and the clock
    moves two, so the next hold request (under the wallet lock) expires them and frees their slots."""
    with clock.engine.begin() as connection:
        connection.execute(text("UPDATE reservations SET expires_at = now() + interval '1 second' WHERE id = ANY(:ids)"),
                           {"ids": [uuid.UUID(h) for h in hold_ids]})
    clock.advance(2)


def test_burst_slots_come_after_the_base_slots_and_settle_at_the_multiplier(api, tokens):
    top_up(api, tokens["admin"], "100")
    plan(api, tokens["admin"], maxConcurrentCalls=10, burstLimit=12, burstMultiplier="2")
    answers = many_holds(api, tokens["charge"], 20)
    admitted = sorted((a.json() for a in answers if a.status_code == 200), key=lambda b: b["concurrency"]["active"])
    assert len(admitted) == 12
    assert [b["reservation"]["burst"] for b in admitted] == [False] * 10 + [True] * 2
    refused = [a.json()["error"] for a in answers if a.status_code == 429]
    assert len(refused) == 8 and {(e["details"]["limit"], e["details"]["active"]) for e in refused} == {(12, 12)}
    assert admitted[-1]["concurrency"] == {"limit": 10, "burstLimit": 12, "active": 12, "remaining": 0}
    base, burst = admitted[0]["reservation"]["id"], admitted[-1]["reservation"]["id"]
    plain = settle(api, tokens["charge"], base, "1000").json()["usageEvent"]
    doubled = settle(api, tokens["charge"], burst, "1000").json()["usageEvent"]
    assert plain["totalCost"] == "0.1" and doubled["totalCost"] == "0.2"
    [item] = api.get(f"/api/billing/usage/{doubled['id']}", tokens["view"]).json()["usageEvent"]["items"]
    assert item["totalCost"] == "0.2" and item["burstMultiplier"] == "2"
    assert wallet(api, tokens["any"])["currentBalance"] == "99.7"


def test_an_admitted_call_settles_in_full_into_debt_and_the_wallet_freezes_until_repaid(
        api, tokens, tenant, engine, make_token):
    top_up(api, tokens["admin"], "1")
    configure(engine, tenant, ["0.5"], webhookUrl="https://example.invalid/hook")
    first = reserve(api, tokens["charge"], "0.5", externalReferenceId="call-a").json()["reservation"]
    second = reserve(api, tokens["charge"], "0.3", externalReferenceId="call-b").json()["reservation"]
    # call a costs 2: past its hold and the balance
    response = settle(api, tokens["charge"], first["id"], "20000")
    assert response.status_code == 200, response.text
    assert response.json()["usageEvent"]["totalCost"] == "2"
    w = wallet(api, tokens["any"])
    assert w["currentBalance"] == "-1" and w["inDebt"] is True
    assert [g["kind"] for g in w["grants"]] == ["debt"]
    assert sum_of_entries(engine, tenant) == Decimal("-1")
    books_balance(api, engine, tenant, tokens["admin"])
    frozen = reserve(api, tokens["charge"], "0.1")
    assert frozen.status_code == 402
    assert frozen.json()["error"]["code"] == "insufficient_balance"
    assert frozen.json()["error"]["details"]["reason"] == "in_debt"
    entitled = api.get("/api/billing/entitlement?featureKey=voice-call", tokens["view"])
    assert entitled.status_code == 402 and entitled.json()["error"]["details"]["reason"] == "in_debt"
    # the running second call still settles, deeper into debt
    assert settle(api, tokens["charge"], second["id"], "5000").status_code == 200
    assert wallet(api, tokens["any"])["currentBalance"] == "-1.5"
    books_balance(api, engine, tenant, tokens["admin"])
    # plain charges (no hold) are judged as before
    plain = api.post("/api/billing/charge", tokens["charge"], json={"featureKey": "f", "items": stt_items("10")})
    assert plain.status_code == 402 and plain.json()["error"]["code"] == "insufficient_balance"
    # a top-up repays the debt first and unfreezes
    top_up(api, tokens["admin"], "2")
    w = wallet(api, tokens["any"])
    assert w["currentBalance"] == "0.5" and w["inDebt"] is False
    assert [(g["kind"], g["remaining"]) for g in w["grants"]] == [("paid", "0.5")]
    books_balance(api, engine, tenant, tokens["admin"])
    assert reserve(api, tokens["charge"], "0.1").status_code == 200
    with engine.connect() as connection:
        kinds = connection.execute(text(
            "SELECT event_type FROM notifications WHERE tenant_id = :t AND event_type LIKE 'wallet.%' "
            "ORDER BY created_at"), {"t": tenant}).scalars().all()
    assert kinds == ["wallet.in_debt", "wallet.debt_repaid"]
    books_balance(api, engine, tenant, tokens["admin"])


def test_a_settlement_past_the_grace_limit_is_refused(api, tokens):
    top_up(api, tokens["admin"], "1")
    plan(api, tokens["admin"], callGraceLimit="0.5")
    hold = reserve(api, tokens["charge"], "0.5").json()["reservation"]
    refused = settle(api, tokens["charge"], hold["id"], "16000")  # 1.6: 0.1 past the grace
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "reservation_exceeded"
    assert refused.json()["error"]["details"]["callGraceLimit"] == "0.5"
    assert settle(api, tokens["charge"], hold["id"], "15000").status_code == 200
    assert wallet(api, tokens["any"])["currentBalance"] == "-0.5"


def test_the_strict_policy_keeps_the_old_answer(api, tokens):
    top_up(api, tokens["admin"], "1")
    assert plan(api, tokens["admin"], settlementPolicy="strict")["callPlan"]["settlementPolicy"] == "strict"
    hold = reserve(api, tokens["charge"], "0.5").json()["reservation"]
    refused = settle(api, tokens["charge"], hold["id"], "20000")
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "reservation_exceeded"
    assert api.get(f"{R}/{hold['id']}", tokens["view"]).json()["reservation"]["status"] == "active"
    assert wallet(api, tokens["any"])["currentBalance"] == "1"


def test_the_plan_is_the_operators_and_checked(api, tokens):
    assert api.request("PATCH", W, tokens["charge"], json={"maxConcurrentCalls": 3}).status_code == 403
    bad = api.request("PATCH", W, tokens["admin"], json={"maxConcurrentCalls": 5, "burstLimit": 4})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "burstLimit"
    bad = api.request("PATCH", W, tokens["admin"], json={"burstMultiplier": "0.5"})
    assert bad.status_code == 400
    bad = api.request("PATCH", W, tokens["admin"], json={"settlementPolicy": "lenient"})
    assert bad.status_code == 400
    changed = plan(api, tokens["admin"], maxConcurrentCalls=2, featureLimits={"voice-call": 1})
    assert changed["callPlan"]["featureLimits"] == {"voice-call": 1}
    top_up(api, tokens["admin"], "10")
    assert reserve(api, tokens["charge"]).status_code == 200
    refused = reserve(api, tokens["charge"])
    assert refused.status_code == 429 and refused.json()["error"]["details"] == {
        "limit": 1, "active": 1, "featureKey": "voice-call"}
    assert reserve(api, tokens["charge"], feature="chat").status_code == 200
    cleared = plan(api, tokens["admin"], maxConcurrentCalls=None, featureLimits={"voice-call": None})
    assert cleared["calls"]["limit"] is None and cleared["calls"]["remaining"] is None
    assert reserve(api, tokens["charge"]).status_code == 200


def test_a_calls_statement_equals_its_ledger_entries_and_shows_cost_to_the_operator_only(
        api, tokens, tenant, make_token):
    top_up(api, tokens["admin"], "10")
    ref = f"call-{uuid.uuid4().hex[:8]}"
    hold = reserve(api, tokens["charge"], "0.5", externalReferenceId=ref).json()["reservation"]
    for n in (1, 2):
        extended = api.post(f"{R}/{hold['id']}/extend", tokens["charge"],
                            json={"amount": "0.25", "idempotencyKey": f"ext-{n}-{ref}"})
        assert extended.status_code == 200 and "concurrency" in extended.json()
    items = [*stt_items("6000"), {"category": "llm", "provider": "openai", "model": "gpt-4", "unit": "token",
                                  "quantity": 500}]
    settled = api.post("/api/billing/charge", tokens["charge"], json={
        "featureKey": "voice-call", "items": items, "reservationId": hold["id"], "idempotencyKey": f"s-{ref}"})
    assert settled.status_code == 200, settled.text
    api.post("/api/billing/charge", tokens["charge"], json={  # another call's charge: not on this statement
        "featureKey": "voice-call", "items": stt_items("100"), "externalReferenceId": "other"})

    call = api.get(f"/api/billing/calls/{ref}", tokens["view"]).json()["call"]
    assert call["externalReferenceId"] == ref
    assert [(h["id"], h["status"], h["amount"], h["burst"]) for h in call["holds"]] == [
        (hold["id"], "settled", "1", False)]
    assert [e["id"] for e in call["events"]] == [settled.json()["usageEvent"]["id"]]
    assert {c["category"] for c in call["components"]} == {"stt", "llm"}
    assert "providerCost" not in call and "margin" not in call
    assert all("providerCost" not in c for c in call["components"] + call["items"])
    total = Decimal(call["totalCost"])
    assert total == Decimal(settled.json()["usageEvent"]["totalCost"]) == sum(
        Decimal(c["cost"]) for c in call["components"])
    # the ledger's own entries for this call: the hold, two extensions and the settlement
    ledger = api.get("/api/billing/transactions?limit=500", tokens["view"]).json()["transactions"]
    mine = [e for e in ledger if e["reservationId"] == hold["id"]]
    assert sorted(e["id"] for e in call["entries"]) == sorted(e["id"] for e in mine)
    assert sorted(e["type"] for e in mine) == ["debit", "hold", "hold", "hold"]
    assert Decimal(call["ledgerTotal"]) == sum(Decimal(e["amount"]) for e in mine) == -total

    operator = api.get(f"/api/billing/calls/{ref}?tenantId={tenant}", make_token("ops", "billing.admin")).json()
    assert "providerCost" in operator["call"] and "margin" in operator["call"]
    if operator["call"]["providerCost"] is not None:
        assert Decimal(operator["call"]["margin"]) == total - Decimal(operator["call"]["providerCost"])
    stranger = make_token(f"t-{uuid.uuid4().hex[:12]}", "billing.view")
    assert api.get(f"/api/billing/calls/{ref}", stranger).status_code == 404
    assert api.get("/api/billing/calls/no-such-call", tokens["view"]).status_code == 404
    assert api.get(f"/api/billing/calls/{ref}", tokens["any"]).status_code == 403


# --- pages and /metrics -------------------------------------------------------------------------------

def _opened(link):
    session = requests.Session()
    assert session.get(link, timeout=30).status_code == 200
    return session


def _csrf(html):
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', html).group(1)


def test_the_console_sets_the_plan_shows_the_slots_and_a_call_and_metrics_count_them(
        api, live, tokens, tenant, engine, make_token):
    top_up(api, tokens["admin"], "10")
    link = api.post("/api/billing/console-sessions", make_token("ops", "billing.admin"),
                    json={"ttlMinutes": 30}).json()["consoleSession"]
    session, base = _opened(link["url"]), f"http://127.0.0.1:{live.port}"
    page = session.get(f"{base}/console/tenants/{tenant}").text
    assert 'data-testid="call-limit">unlimited' in page
    form = {"csrf_token": _csrf(page), "maxConcurrentCalls": "1", "burstLimit": "", "burstMultiplier": "1",
            "callGraceLimit": "", "settlementPolicy": "grace"}
    assert session.post(f"{base}/console/tenants/{tenant}/call-plan", data=form).status_code == 400  # no reason
    done = session.post(f"{base}/console/tenants/{tenant}/call-plan", data={**form, "reason": "plan: starter"})
    assert done.status_code == 200 and "Done: call plan" in done.text
    assert wallet(api, tokens["any"])["calls"]["limit"] == 1
    with engine.connect() as connection:
        recorded = connection.execute(text("SELECT request->>'reason', request->>'maxConcurrentCalls' FROM page_actions "
                                           "WHERE tenant_id = :t AND action = 'call_plan'"), {"t": tenant}).all()
    assert [tuple(r) for r in recorded] == [("plan: starter", "1")]

    hold = reserve(api, tokens["charge"], "0.5", externalReferenceId="console-call").json()["reservation"]
    assert reserve(api, tokens["charge"]).status_code == 429
    page = session.get(f"{base}/console/tenants/{tenant}").text
    assert 'data-testid="active-calls">1<' in page and "at the limit" in page
    listed = session.get(f"{base}/console/").text
    assert tenant in listed.split('id="call-slots-table"')[1]
    exported = api.get("/metrics").text
    assert f'lad_active_calls{{tenant="{tenant}"}} 1.0' in exported
    assert re.search(r"^lad_tenants_at_call_limit [1-9]", exported, re.M)

    assert settle(api, tokens["charge"], hold["id"], "3000").status_code == 200
    statement = session.get(f"{base}/console/tenants/{tenant}/calls?ref=console-call")
    assert statement.status_code == 200
    assert 'data-testid="call-total"><span class="num">0.3</span>' in statement.text
    assert 'data-testid="call-margin"' in statement.text
    assert session.get(f"{base}/console/tenants/{tenant}/calls/no-such-call").status_code == 404


def test_the_portal_shows_a_call_without_cost_or_margin(api, tokens, tenant):
    top_up(api, tokens["admin"], "10")
    hold = reserve(api, tokens["charge"], "0.5", externalReferenceId="portal/call-1").json()["reservation"]
    assert settle(api, tokens["charge"], hold["id"], "2000").status_code == 200
    link = api.post("/api/billing/portal-sessions", tokens["admin"], json={}).json()["portalSession"]
    session = _opened(link["url"])
    base = link["url"].split("/portal/")[0]
    page = session.get(f"{base}/portal/calls/portal/call-1")
    assert page.status_code == 200, page.text
    assert 'data-testid="call-total"><span class="num">0.2</span>' in page.text
    assert 'data-testid="call-ledger-total"><span class="num">-0.2</span>' in page.text
    assert "call-margin" not in page.text and "Provider cost" not in page.text
    assert session.get(f"{base}/portal/calls/another-tenants-call").status_code == 404


def test_an_auto_top_up_the_settlement_triggers_repays_the_debt_and_unfreezes(api, tokens, tenant, stripe_client):
    from tests.support.auto_topup import own_card, put_rule, wait_finished

    card = own_card(api, tokens["admin"], stripe_client)
    top_up(api, tokens["admin"], "20")
    assert put_rule(api, tokens["admin"], card).status_code == 200  # below 10: recharge to 50
    hold = reserve(api, tokens["charge"], "1", externalReferenceId="long-call").json()["reservation"]
    assert settle(api, tokens["charge"], hold["id"], "300000").status_code == 200  # 30: 10 into debt
    [attempt] = wait_finished(api, tokens["admin"], tenant)
    assert attempt["status"] == "succeeded", attempt
    w = wallet(api, tokens["any"])
    assert w["inDebt"] is False and w["currentBalance"] == "50"
    assert [g["kind"] for g in w["grants"]] == ["paid"]
    assert reserve(api, tokens["charge"], "1").status_code == 200
    verified = api.get(f"/api/billing/ledger/verify?tenantId={tenant}", tokens["admin"]).json()
    assert verified["ok"], verified
