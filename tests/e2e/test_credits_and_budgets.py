"""Credit grants (kinds, priority, expiry), refunds, adjustments and per-feature budgets on the real
stack: success paths, every error code, idempotent replay and tenant isolation."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from tests.support.helpers import assert_ledger_consistent, stt_items, top_up, wallet
from tests.support.polling import eventually


def grant(api, admin, amount, **extra):
    response = api.post("/api/billing/topup", admin, json={"amount": amount, "idempotencyKey": f"g-{uuid.uuid4()}",
                                                           **extra})
    assert response.status_code == 200, response.text
    return response.json()


def charge(api, token, seconds, feature="voice-call", **extra):
    return api.post("/api/billing/charge", token, json={"featureKey": feature, "items": stt_items(seconds),
                                                        "idempotencyKey": f"c-{uuid.uuid4()}", **extra})


def later(seconds):
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def remaining(api, token):
    return {g["id"]: g["remaining"] for g in wallet(api, token)["grants"]}


# --- grants ---------------------------------------------------------------------------------------


def test_a_top_up_is_a_grant_shown_on_the_wallet(api, tokens):
    body = grant(api, tokens["admin"], "5", kind="promotional", expiresAt=later(3600), priority=10)
    g = body["grant"]
    assert (g["kind"], g["amount"], g["remaining"], g["priority"], g["source"]) == ("promotional", "5", "5", 10,
                                                                                   "topup")
    assert body["transaction"]["grantId"] == g["id"] and body["transaction"]["type"] == "topup"
    w = wallet(api, tokens["any"])
    assert w["currentBalance"] == "5" and [x["id"] for x in w["grants"]] == [g["id"]]
    assert w["grants"][0]["expiresAt"] is not None


def test_debits_draw_on_grants_in_the_documented_order(api, tokens, tenant, make_token):
    paid_old = grant(api, tokens["admin"], "1")["grant"]["id"]
    paid_new = grant(api, tokens["admin"], "1")["grant"]["id"]
    promo = grant(api, tokens["admin"], "1", kind="promotional")["grant"]["id"]
    soon = grant(api, tokens["admin"], "1", kind="paid", expiresAt=later(3600))["grant"]["id"]
    first = grant(api, tokens["admin"], "1", kind="paid", priority=0)["grant"]["id"]
    # priority 0 first, then the expiring grant, then promotional before paid, then the oldest paid
    order = []
    for _ in range(5):
        before = remaining(api, tokens["admin"])
        assert charge(api, tokens["charge"], "10000").status_code == 200
        after = remaining(api, tokens["admin"])
        [drawn] = [g for g in before if g not in after or after[g] != before[g]]
        order.append(drawn)
    assert order == [first, soon, promo, paid_old, paid_new]
    assert wallet(api, tokens["any"])["currentBalance"] == "0"
    assert_ledger_consistent(api, make_token, tenant)


def test_an_expired_grant_leaves_the_balance_with_an_expiry_entry(api, tokens, tenant, make_token, clock):
    grant(api, tokens["admin"], "3")
    grant(api, tokens["admin"], "2", kind="promotional", expiresAt=later(1))
    assert charge(api, tokens["charge"], "5000").status_code == 200  # 0.5, from the promotional grant
    clock.advance(1.2)  # past the promotional grant's expiry
    eventually(lambda: wallet(api, tokens["admin"])["currentBalance"] == "3", timeout=30, what="the grant expired")
    w = wallet(api, tokens["admin"])
    assert w["currentBalance"] == "3" and [g["kind"] for g in w["grants"]] == ["paid"]
    [expiry] = api.get("/api/billing/transactions?type=expiry", tokens["view"]).json()["transactions"]
    assert expiry["amount"] == "-1.5"
    assert_ledger_consistent(api, make_token, tenant)


def test_credits_backing_a_hold_do_not_expire_under_it(api, tokens, tenant, make_token, clock):
    grant(api, tokens["admin"], "4", expiresAt=later(1))
    hold = api.post("/api/billing/reservations", tokens["charge"], json={
        "featureKey": "voice-call", "amount": "3", "idempotencyKey": "h"}).json()["reservation"]
    clock.advance(1.2)  # past the grant's expiry; nothing to poll for
    w = wallet(api, tokens["admin"])
    assert (w["currentBalance"], w["reservedBalance"]) == ("3", "3")  # only the unheld 1 expired
    settled = charge(api, tokens["charge"], "20000", reservationId=hold["id"])
    assert settled.status_code == 200, settled.text
    w = wallet(api, tokens["admin"])  # the rest of the expired grant ends with the hold
    assert (w["currentBalance"], w["reservedBalance"], w["grants"]) == ("0", "0", [])
    assert_ledger_consistent(api, make_token, tenant)


def test_grant_fields_are_validated(api, tokens):
    past = api.post("/api/billing/topup", tokens["admin"], json={
        "amount": "1", "idempotencyKey": "p", "expiresAt": "2020-01-01T00:00:00Z"})
    assert past.status_code == 400 and past.json()["error"]["details"]["field"] == "expiresAt"
    for body in ({"kind": "gift"}, {"priority": 101}, {"priority": "1"}):
        response = api.post("/api/billing/topup", tokens["admin"], json={"amount": "1", "idempotencyKey": "x", **body})
        assert response.status_code == 400, body
    assert wallet(api, tokens["any"])["currentBalance"] == "0"


# --- refunds --------------------------------------------------------------------------------------


def test_refunds_credit_back_a_debit_never_more_than_it_took(api, tokens, tenant, make_token):
    promo = grant(api, tokens["admin"], "2", kind="promotional")["grant"]["id"]
    grant(api, tokens["admin"], "10")
    debit = charge(api, tokens["charge"], "30000").json()["transaction"]  # 3: 2 promotional + 1 paid
    body = {"transactionId": debit["id"], "amount": "0.5", "reason": "dropped call", "idempotencyKey": "r1"}
    first = api.post("/api/billing/refunds", tokens["admin"], json=body)
    assert first.status_code == 200, first.text
    refund = first.json()["transaction"]
    assert (refund["type"], refund["amount"], refund["relatedTransactionId"]) == ("refund", "0.5", debit["id"])
    assert refund["description"] == "dropped call"
    replay = api.post("/api/billing/refunds", tokens["admin"], json=body)
    assert replay.headers.get("Idempotent-Replayed") == "true" and replay.json()["transaction"]["id"] == refund["id"]
    conflict = api.post("/api/billing/refunds", tokens["admin"], json={**body, "amount": "0.6"})
    assert conflict.status_code == 409
    too_much = api.post("/api/billing/refunds", tokens["admin"], json={
        "transactionId": debit["id"], "amount": "2.51", "reason": "x", "idempotencyKey": "r2"})
    assert too_much.status_code == 422 and too_much.json()["error"]["code"] == "refund_exceeded"
    assert too_much.json()["error"]["details"]["refundable"] == "2.5"
    rest = api.post("/api/billing/refunds", tokens["admin"], json={
        "transactionId": debit["id"], "reason": "all of it", "idempotencyKey": "r3"})
    assert rest.json()["transaction"]["amount"] == "2.5"
    nothing_left = api.post("/api/billing/refunds", tokens["admin"], json={
        "transactionId": debit["id"], "reason": "again", "idempotencyKey": "r4"})
    assert nothing_left.status_code == 422
    w = wallet(api, tokens["admin"])
    assert w["currentBalance"] == "12"
    # the credits went back where they came from: the promotional grant is whole again
    assert {g["id"]: g["remaining"] for g in w["grants"]}[promo] == "2"
    assert_ledger_consistent(api, make_token, tenant)


def test_only_a_debit_of_this_tenant_can_be_refunded(api, tokens, make_token):
    topup = grant(api, tokens["admin"], "1")["transaction"]
    not_debit = api.post("/api/billing/refunds", tokens["admin"], json={
        "transactionId": topup["id"], "reason": "x", "idempotencyKey": "a"})
    assert not_debit.status_code == 400 and not_debit.json()["error"]["details"]["field"] == "transactionId"
    other = f"t-{uuid.uuid4().hex[:12]}"
    top_up(api, make_token(other, "billing.admin"), "5")
    theirs = charge(api, make_token(other, "billing.charge"), "10000").json()["transaction"]
    response = api.post("/api/billing/refunds", tokens["admin"], json={
        "transactionId": theirs["id"], "reason": "x", "idempotencyKey": "b"})
    assert response.status_code == 404
    assert api.post("/api/billing/refunds", tokens["charge"], json={
        "transactionId": topup["id"], "reason": "x", "idempotencyKey": "c"}).status_code == 403
    no_reason = api.post("/api/billing/refunds", tokens["admin"], json={
        "transactionId": topup["id"], "idempotencyKey": "d"})
    assert no_reason.status_code == 400 and no_reason.json()["error"]["details"]["field"] == "reason"


# --- adjustments ----------------------------------------------------------------------------------


def test_adjustments_are_signed_corrections_with_a_reason(api, tokens, tenant, make_token):
    up = api.post("/api/billing/adjustments", tokens["admin"], json={
        "amount": "2", "reason": "goodwill", "idempotencyKey": "a1", "kind": "promotional"})
    assert up.status_code == 200, up.text
    assert up.json()["transaction"]["type"] == "adjustment" and up.json()["grant"]["kind"] == "promotional"
    down = api.post("/api/billing/adjustments", tokens["admin"], json={
        "amount": "-0.5", "reason": "double credit", "idempotencyKey": "a2"})
    assert down.status_code == 200 and down.json()["transaction"]["amount"] == "-0.5"
    assert down.json()["grant"] is None
    replay = api.post("/api/billing/adjustments", tokens["admin"], json={
        "amount": "-0.5", "reason": "double credit", "idempotencyKey": "a2"})
    assert replay.headers.get("Idempotent-Replayed") == "true"
    below = api.post("/api/billing/adjustments", tokens["admin"], json={
        "amount": "-1.51", "reason": "too much", "idempotencyKey": "a3"})
    assert below.status_code == 402 and below.json()["error"]["code"] == "insufficient_balance"
    for body in ({"amount": "1", "idempotencyKey": "a4"}, {"amount": "0", "reason": "r", "idempotencyKey": "a5"},
                 {"amount": "1", "reason": "", "idempotencyKey": "a6"}):
        assert api.post("/api/billing/adjustments", tokens["admin"], json=body).status_code == 400, body
    assert api.post("/api/billing/adjustments", tokens["charge"], json={
        "amount": "1", "reason": "r", "idempotencyKey": "a7"}).status_code == 403
    assert wallet(api, tokens["any"])["currentBalance"] == "1.5"
    assert_ledger_consistent(api, make_token, tenant)


# --- budgets --------------------------------------------------------------------------------------


def put_budget(api, admin, feature, limit, period="day", action="reject"):
    response = api.request("PUT", f"/api/billing/budgets/{feature}", admin,
                           json={"limit": limit, "period": period, "action": action})
    assert response.status_code == 200, response.text
    return response.json()["budget"]


def test_a_budget_rejects_the_charge_that_would_go_over_it(api, tokens):
    top_up(api, tokens["admin"], "100")
    assert charge(api, tokens["charge"], "10000", feature="stt").status_code == 200  # before the budget
    budget = put_budget(api, tokens["admin"], "stt", "2.5")
    assert (budget["limit"], budget["spent"], budget["remaining"], budget["period"]) == ("2.5", "1", "1.5", "day")
    assert charge(api, tokens["charge"], "10000", feature="stt").status_code == 200
    over = charge(api, tokens["charge"], "10000", feature="stt")
    assert over.status_code == 402 and over.json()["error"]["code"] == "budget_exceeded"
    assert over.json()["error"]["details"]["limit"] == "2.5"
    assert charge(api, tokens["charge"], "5000", feature="stt").status_code == 200  # exactly to the limit
    assert charge(api, tokens["charge"], "10000", feature="tts").status_code == 200  # other features are free
    [status] = api.get("/api/billing/budgets", tokens["view"]).json()["budgets"]
    assert (status["spent"], status["remaining"]) == ("2.5", "0")


def test_holds_count_against_a_budget(api, tokens):
    top_up(api, tokens["admin"], "100")
    put_budget(api, tokens["admin"], "calls", "2", period="month")
    hold = api.post("/api/billing/reservations", tokens["charge"], json={
        "featureKey": "calls", "amount": "1.5", "idempotencyKey": "h1"})
    assert hold.status_code == 200
    second = api.post("/api/billing/reservations", tokens["charge"], json={
        "featureKey": "calls", "amount": "1", "idempotencyKey": "h2"})
    assert second.status_code == 402 and second.json()["error"]["code"] == "budget_exceeded"
    assert charge(api, tokens["charge"], "10000", feature="calls").status_code == 402
    [status] = api.get("/api/billing/budgets", tokens["view"]).json()["budgets"]
    assert (status["held"], status["spent"], status["remaining"]) == ("1.5", "0", "0.5")
    # settling the hold counts its cost, not the hold
    settled = charge(api, tokens["charge"], "20000", feature="calls", reservationId=hold.json()["reservation"]["id"])
    assert settled.status_code == 200, settled.text
    [status] = api.get("/api/billing/budgets", tokens["view"]).json()["budgets"]
    assert (status["held"], status["spent"], status["remaining"]) == ("0", "2", "0")


def test_an_alerting_budget_does_not_reject(api, tokens):
    top_up(api, tokens["admin"], "10")
    put_budget(api, tokens["admin"], "stt", "0.5", action="alert")
    assert charge(api, tokens["charge"], "10000", feature="stt").status_code == 200
    [status] = api.get("/api/billing/budgets", tokens["view"]).json()["budgets"]
    assert status["spent"] == "1" and status["action"] == "alert"


def test_refunds_give_budget_back(api, tokens):
    top_up(api, tokens["admin"], "10")
    put_budget(api, tokens["admin"], "stt", "1")
    debit = charge(api, tokens["charge"], "10000", feature="stt").json()["transaction"]
    assert charge(api, tokens["charge"], "100", feature="stt").status_code == 402
    api.post("/api/billing/refunds", tokens["admin"], json={"transactionId": debit["id"], "amount": "0.4",
                                                             "reason": "r", "idempotencyKey": "r"})
    assert charge(api, tokens["charge"], "4000", feature="stt").status_code == 200


def test_budget_administration(api, tokens, make_token):
    assert api.request("PUT", "/api/billing/budgets/stt", tokens["charge"],
                       json={"limit": "1", "period": "day"}).status_code == 403
    for body in ({"limit": "-1", "period": "day"}, {"limit": "1", "period": "week"},
                 {"limit": "1", "period": "day", "action": "warn"}):
        assert api.request("PUT", "/api/billing/budgets/stt", tokens["admin"], json=body).status_code == 400
    assert api.request("PUT", "/api/billing/budgets/bad%20key", tokens["admin"],
                       json={"limit": "1", "period": "day"}).status_code == 400
    put_budget(api, tokens["admin"], "stt", "1")
    put_budget(api, tokens["admin"], "stt", "3")  # a second PUT changes it
    [status] = api.get("/api/billing/budgets", tokens["view"]).json()["budgets"]
    assert status["limit"] == "3"
    other = make_token(f"t-{uuid.uuid4().hex[:12]}", "billing.view")
    assert api.get("/api/billing/budgets", other).json()["budgets"] == []
    deleted = api.request("DELETE", "/api/billing/budgets/stt", tokens["admin"])
    assert deleted.status_code == 200 and deleted.json()["budgets"] == []
    assert api.request("DELETE", "/api/billing/budgets/stt", tokens["admin"]).status_code == 404
    assert Decimal(wallet(api, tokens["any"])["currentBalance"]) == 0


# --- expiry, holds and refunds together (review findings) -----------------------------------------


def test_overdue_credits_back_a_hold_before_valid_credits_are_touched(api, tokens, tenant, make_token, clock):
    expiring = grant(api, tokens["admin"], "10", expiresAt=later(1))["grant"]["id"]
    lasting = grant(api, tokens["admin"], "5")["grant"]["id"]
    hold = api.post("/api/billing/reservations", tokens["charge"], json={
        "featureKey": "voice-call", "amount": "10", "idempotencyKey": "h"}).json()["reservation"]
    clock.advance(1.2)  # past the first grant's expiry
    # the overdue 10 back the hold of 10: nothing can expire yet, and the lasting grant is untouched
    assert remaining(api, tokens["admin"]) == {expiring: "10", lasting: "5"}
    assert charge(api, tokens["charge"], "100000", reservationId=hold["id"]).status_code == 200  # costs 10
    w = wallet(api, tokens["admin"])
    assert w["currentBalance"] == "5" and remaining(api, tokens["admin"]) == {lasting: "5"}
    assert_ledger_consistent(api, make_token, tenant)


def test_a_refund_does_not_revive_an_expired_grant(api, tokens, tenant, make_token, clock):
    grant(api, tokens["admin"], "10", kind="promotional", expiresAt=later(1))
    debit = charge(api, tokens["charge"], "40000").json()["transaction"]
    clock.advance(1.2)
    assert wallet(api, tokens["admin"])["currentBalance"] == "0"  # the 6 left expired
    body = {"transactionId": debit["id"], "reason": "r", "idempotencyKey": "r"}
    refund = api.post("/api/billing/refunds", tokens["admin"], json=body).json()
    assert refund["grant"]["kind"] == "promotional" and refund["grant"]["expiresAt"] is None
    replay = api.post("/api/billing/refunds", tokens["admin"], json=body).json()
    assert replay["grant"] == refund["grant"]  # a replay answers exactly what the first answer said
    time.sleep(0.2)
    w = wallet(api, tokens["admin"])
    assert w["currentBalance"] == "4" and [g["remaining"] for g in w["grants"]] == ["4"]
    assert_ledger_consistent(api, make_token, tenant)


def test_extending_a_hold_cannot_take_expired_credits(api, tokens, clock):
    grant(api, tokens["admin"], "5", expiresAt=later(1))
    hold = api.post("/api/billing/reservations", tokens["charge"], json={
        "featureKey": "voice-call", "amount": "2", "ttlSeconds": 600, "idempotencyKey": "h"}).json()["reservation"]
    clock.advance(1.2)
    more = api.post(f"/api/billing/reservations/{hold['id']}/extend", tokens["charge"],
                    json={"amount": "1", "idempotencyKey": "e"})
    assert more.status_code == 402 and more.json()["error"]["code"] == "insufficient_balance"
    w = wallet(api, tokens["admin"])
    assert (w["currentBalance"], w["reservedBalance"], w["availableBalance"]) == ("2", "2", "0")


def test_an_alerting_budget_notifies_once_per_period(api, tokens):
    settings = api.request("PUT", "/api/billing/settings/alerts", tokens["admin"], json={
        "thresholds": ["0"], "webhookUrl": "http://127.0.0.1:9/nobody-listens"})
    assert settings.status_code == 200, settings.text
    top_up(api, tokens["admin"], "10")
    put_budget(api, tokens["admin"], "stt", "1", action="alert")
    for _ in range(3):  # over the limit twice: still one notification this period
        assert charge(api, tokens["charge"], "7000", feature="stt").status_code == 200
    found = api.get("/api/billing/notifications?type=budget.exceeded", tokens["admin"]).json()["notifications"]
    assert len(found) == 1, found
    assert found[0]["payload"]["featureKey"] == "stt" and found[0]["payload"]["limit"] == "1"
