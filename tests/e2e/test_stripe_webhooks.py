"""POST /api/billing/webhooks/stripe on the real stack: payloads signed with the stripe library's own
scheme (no call reaches Stripe), stored by the web app, applied by the real Celery worker.

Stripe amounts are cents: 1234 cents credit "12.34". The worker is asynchronous, so each test polls
(with a deadline) until the stored event has left the `received` state and/or the wallet shows the
expected balance; "nothing changed" is asserted only after the worker has demonstrably handled the event.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from billing_core import exactjson
from tests.support.helpers import Api, stt_items, top_up, wallet
from tests.support.polling import eventually
from tests.support.stripe_events import (
    DEADLINE_SECONDS,
    HANDLED,
    _id,
    charge_refunded,
    checkout_completed,
    dispute_created,
    event_row,
    make_event,
    payment_intent_succeeded,
    post_raw,
    send,
    sign,
)

PAIRS = 30


# --- building and sending events ------------------------------------------------------------------



















# --- observing the worker ---------------------------------------------------------------------------



def wait_handled(engine, event_id: str) -> Any:
    """Poll until the worker has handled the stored event (processed, ignored, or waiting for its payment)."""
    def stored() -> Any:
        row = event_row(engine, event_id)
        assert row is not None, f"event {event_id} was not stored"
        return row

    return eventually(stored, DEADLINE_SECONDS, 0.1, until=lambda row: row.status in HANDLED,
                      what=f"event {event_id} handled (did its task raise? see worker.log)")


def deliver(api: Api, engine, event: dict[str, Any], expect: str) -> Any:
    send(api, event)
    row = wait_handled(engine, event["id"])
    assert row.status == expect, (row.status, row.detail)
    return row


def wait_balance(api: Api, token: str, expected: str) -> dict[str, Any]:
    """Poll GET /wallet until the balance is the expected one."""
    return eventually(lambda: wallet(api, token), DEADLINE_SECONDS, 0.1, what=f"a balance of {expected}",
                      until=lambda current: Decimal(current["currentBalance"]) == Decimal(expected))


def transactions(api: Api, token: str) -> list[dict[str, Any]]:
    response = api.get("/api/billing/transactions?limit=500", token)
    assert response.status_code == 200, response.text
    return response.json()["transactions"]


def verify(api: Api, make_token: Callable[..., str], tenant_id: str) -> None:
    result = api.get(f"/api/billing/ledger/verify?tenantId={tenant_id}", make_token(tenant_id, "billing.admin"))
    assert result.status_code == 200, result.text
    assert result.json()["ok"] is True, result.json()
    assert result.json()["walletsChecked"] == 1


def assert_untouched(api: Api, token: str) -> None:
    current = wallet(api, token)
    assert (current["currentBalance"], current["reservedBalance"], current["grants"]) == ("0", "0", [])
    assert current["flagged"] is False
    assert transactions(api, token) == []


def stripe_grants(current: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for g in current["grants"] if g["source"] == "stripe"]


# --- 1, 2, 3: crediting a payment once ---------------------------------------------------------------

def test_paid_checkout_credits_a_paid_stripe_grant(api, engine, tenant, tokens, make_token):
    payment = _id("pi")
    deliver(api, engine, checkout_completed(tenant, payment, 1234), "processed")
    current = wait_balance(api, tokens["admin"], "12.34")
    assert current["currentBalance"] == "12.34" and current["availableBalance"] == "12.34"
    [grant] = current["grants"]
    assert (grant["kind"], grant["source"], grant["amount"], grant["remaining"]) == ("paid", "stripe", "12.34",
                                                                                      "12.34")
    [entry] = transactions(api, tokens["admin"])
    assert (entry["type"], entry["amount"], entry["grantId"]) == ("topup", "12.34", grant["id"])
    verify(api, make_token, tenant)


def test_payment_intent_of_the_same_payment_adds_nothing(api, engine, tenant, tokens, make_token):
    payment = _id("pi")
    deliver(api, engine, checkout_completed(tenant, payment, 2500), "processed")
    wait_balance(api, tokens["admin"], "25")
    row = deliver(api, engine, payment_intent_succeeded(tenant, payment, 2500), "ignored")
    assert payment in row.detail
    current = wallet(api, tokens["admin"])
    assert current["currentBalance"] == "25" and len(stripe_grants(current)) == 1
    assert len(transactions(api, tokens["admin"])) == 1
    verify(api, make_token, tenant)


def test_payment_intent_first_then_checkout_credits_once(api, engine, tenant, tokens):
    payment = _id("pi")
    deliver(api, engine, payment_intent_succeeded(tenant, payment, 700), "processed")
    wait_balance(api, tokens["admin"], "7")
    deliver(api, engine, checkout_completed(tenant, payment, 700), "ignored")
    assert wallet(api, tokens["admin"])["currentBalance"] == "7"
    assert len(transactions(api, tokens["admin"])) == 1


def test_both_credit_events_at_once_credit_once(api, engine, tenant, tokens, make_token):
    payment = _id("pi")
    events = [checkout_completed(tenant, payment, 900), payment_intent_succeeded(tenant, payment, 900)]
    threads = [threading.Thread(target=send, args=(api, e)) for e in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(wait_handled(engine, e["id"]).status for e in events)
    assert statuses == ["ignored", "processed"]
    assert wallet(api, tokens["admin"])["currentBalance"] == "9"
    assert len(transactions(api, tokens["admin"])) == 1
    verify(api, make_token, tenant)


def test_redelivered_event_is_a_duplicate_and_adds_nothing(api, engine, tenant, tokens):
    payment = _id("pi")
    event = checkout_completed(tenant, payment, 500)
    deliver(api, engine, event, "processed")
    wait_balance(api, tokens["admin"], "5")
    body = exactjson.dumps(event)
    for _ in range(2):  # Stripe redelivers the same event id, freshly signed
        response = post_raw(api, body, sign(body))
        assert response.status_code == 200, response.text
        assert response.json() == {"received": True, "duplicate": True}
    # the same signed request replayed byte for byte (within the tolerance) is a duplicate as well
    header = sign(body)
    assert post_raw(api, body, header).json()["duplicate"] is True
    assert post_raw(api, body, header).json()["duplicate"] is True
    assert event_row(engine, event["id"]).status == "processed"
    assert wallet(api, tokens["admin"])["currentBalance"] == "5"
    assert len(transactions(api, tokens["admin"])) == 1


def test_redelivery_while_the_worker_has_not_run_yet_is_still_a_duplicate(api, engine, tenant, tokens):
    event = checkout_completed(tenant, _id("pi"), 300)
    body = exactjson.dumps(event)
    results = []
    threads = [threading.Thread(target=lambda: results.append(post_raw(api, body, sign(body)))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.status_code == 200 for r in results)
    assert sorted(r.json()["duplicate"] for r in results) == [False, True, True, True]
    assert wait_handled(engine, event["id"]).status == "processed"
    assert wallet(api, tokens["admin"])["currentBalance"] == "3"
    assert len(transactions(api, tokens["admin"])) == 1


# --- 4: signatures ------------------------------------------------------------------------------------

def _rejected(response: Any) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == "invalid_signature", body


@pytest.mark.parametrize("case", ["tampered", "wrong_secret", "missing_header", "empty_header", "too_old",
                                  "no_v1_signature", "garbled_header"])
def test_bad_signature_is_refused_and_writes_nothing(api, engine, tenant, tokens, case):
    event = checkout_completed(tenant, _id("pi"), 100000)
    body = exactjson.dumps(event)
    now = int(time.time())
    if case == "tampered":  # signed, then the amount was raised
        header = sign(body)
        body = body.replace('"amount_total":100000', '"amount_total":900000')
        assert '"amount_total":900000' in body
    elif case == "wrong_secret":
        header = sign(body, secret="whsec_test_" + uuid.uuid4().hex)
    elif case == "missing_header":
        header = None
    elif case == "empty_header":
        header = ""
    elif case == "too_old":  # correctly signed, but longer ago than the 300 s tolerance: a replay
        header = sign(body, timestamp=now - 301)
    elif case == "no_v1_signature":
        header = sign(body).replace(",v1=", ",v0=")
    else:
        header = "not-a-stripe-signature"
    _rejected(post_raw(api, body, header))
    assert event_row(engine, event["id"]) is None
    assert_untouched(api, tokens["admin"])


def test_signature_within_tolerance_is_accepted(api, engine, tenant, tokens):
    event = checkout_completed(tenant, _id("pi"), 150)
    body = exactjson.dumps(event)
    response = post_raw(api, body, sign(body, timestamp=int(time.time()) - 240))
    assert response.status_code == 200 and response.json() == {"received": True, "duplicate": False}
    assert wait_handled(engine, event["id"]).status == "processed"
    wait_balance(api, tokens["admin"], "1.5")


def test_a_rejected_replay_does_not_block_the_genuine_event(api, engine, tenant, tokens):
    """A refused request stores nothing, so the genuine delivery of the same event id is not a duplicate."""
    event = checkout_completed(tenant, _id("pi"), 200)
    body = exactjson.dumps(event)
    _rejected(post_raw(api, body, sign(body, secret="whsec_wrong")))
    send(api, event)
    assert wait_handled(engine, event["id"]).status == "processed"
    wait_balance(api, tokens["admin"], "2")


def test_signed_body_that_is_not_an_event_is_refused(api, engine, tenant, tokens):
    for body in ['{"type": "checkout.session.completed"}', "[]", '{"id": ""}']:
        response = post_raw(api, body, sign(body))
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "validation_error"
    assert_untouched(api, tokens["admin"])


# --- 5: refunds, in and out of order -----------------------------------------------------------------

def test_refund_before_its_checkout_is_applied_once_the_payment_is_credited(api, engine, tenant, tokens,
                                                                               make_token):
    payment = _id("pi")
    refund = charge_refunded(tenant, payment, 1000, 400)
    row = deliver(api, engine, refund, "waiting")
    assert payment in row.detail
    current = wallet(api, tokens["admin"])
    assert current["currentBalance"] == "0" and transactions(api, tokens["admin"]) == []

    deliver(api, engine, checkout_completed(tenant, payment, 1000), "processed")
    current = wait_balance(api, tokens["admin"], "6")
    assert event_row(engine, refund["id"]).status == "processed"
    assert current["flagged"] is False
    [grant] = stripe_grants(current)
    assert (grant["amount"], grant["remaining"]) == ("10", "6")
    entries = {e["type"]: e for e in transactions(api, tokens["admin"])}
    assert set(entries) == {"topup", "adjustment"}
    assert entries["adjustment"]["amount"] == "-4"
    assert entries["adjustment"]["relatedTransactionId"] == entries["topup"]["id"]
    verify(api, make_token, tenant)


def test_refund_before_its_payment_intent_is_applied_too(api, engine, tenant, tokens):
    payment = _id("pi")
    deliver(api, engine, charge_refunded(tenant, payment, 800, 800), "waiting")
    deliver(api, engine, payment_intent_succeeded(tenant, payment, 800), "processed")
    wait_balance(api, tokens["admin"], "0")
    assert sorted(e["type"] for e in transactions(api, tokens["admin"])) == ["adjustment", "topup"]


def test_cumulative_refunds_claw_back_only_the_difference(api, engine, tenant, tokens, make_token):
    payment = _id("pi")
    deliver(api, engine, checkout_completed(tenant, payment, 1000), "processed")
    wait_balance(api, tokens["admin"], "10")
    deliver(api, engine, charge_refunded(tenant, payment, 1000, 300), "processed")
    wait_balance(api, tokens["admin"], "7")
    deliver(api, engine, charge_refunded(tenant, payment, 1000, 800), "processed")  # 8.00 refunded in all
    wait_balance(api, tokens["admin"], "2")
    # an older, smaller cumulative total arriving late claws back nothing more
    deliver(api, engine, charge_refunded(tenant, payment, 1000, 300), "ignored")
    # nor does a total above what was paid take more than the payment
    deliver(api, engine, charge_refunded(tenant, payment, 1000, 5000), "processed")
    current = wait_balance(api, tokens["admin"], "0")
    deliver(api, engine, charge_refunded(tenant, payment, 1000, 1000), "ignored")
    assert current["flagged"] is False
    adjustments = [e["amount"] for e in transactions(api, tokens["admin"]) if e["type"] == "adjustment"]
    assert sorted(adjustments) == sorted(["-3", "-5", "-2"])
    verify(api, make_token, tenant)


def test_two_refunds_waiting_for_one_payment_apply_in_order(api, engine, tenant, tokens, make_token):
    payment = _id("pi")
    deliver(api, engine, charge_refunded(tenant, payment, 1000, 250), "waiting")
    deliver(api, engine, charge_refunded(tenant, payment, 1000, 600), "waiting")
    deliver(api, engine, checkout_completed(tenant, payment, 1000), "processed")
    wait_balance(api, tokens["admin"], "4")
    adjustments = sorted(e["amount"] for e in transactions(api, tokens["admin"]) if e["type"] == "adjustment")
    assert adjustments == ["-2.5", "-3.5"]
    verify(api, make_token, tenant)


def test_refund_and_checkout_delivered_at_the_same_moment(api, engine, tenant, tokens, make_token):
    """Stripe does not order deliveries: whichever the worker takes first, the refund is applied once."""
    pairs = []
    for _ in range(PAIRS):
        payment = _id("pi")
        pairs.append((charge_refunded(tenant, payment, 100, 100), checkout_completed(tenant, payment, 100)))
    for refund, checkout in pairs:
        threads = [threading.Thread(target=send, args=(api, e)) for e in (refund, checkout)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for _, checkout in pairs:
        assert wait_handled(engine, checkout["id"]).status == "processed"
    stuck = [r["id"] for r, _ in pairs if wait_handled(engine, r["id"]).status != "processed"]
    assert stuck == [], "refunds left waiting although their payment was credited"
    wait_balance(api, tokens["admin"], "0")
    verify(api, make_token, tenant)




# --- 6: disputes ------------------------------------------------------------------------------------

def test_dispute_after_spending_takes_the_wallet_below_zero_and_flags_it(api, engine, tenant, tokens, make_token):
    payment = _id("pi")
    deliver(api, engine, checkout_completed(tenant, payment, 1000), "processed")
    wait_balance(api, tokens["admin"], "10")
    charge = api.post("/api/billing/charge", tokens["charge"],
                      json={"featureKey": "f", "idempotencyKey": "spend", "items": stt_items("90000")})
    assert charge.status_code in (200, 202), charge.text
    wait_balance(api, tokens["admin"], "1")  # 9 of the 10 credits spent

    deliver(api, engine, dispute_created(payment, 1000), "processed")
    current = wait_balance(api, tokens["admin"], "-9")
    assert current["flagged"] is True and current["flagReason"]
    assert current["availableBalance"] == "-9"
    verify(api, make_token, tenant)

    entries = transactions(api, tokens["admin"])
    [topup] = [e for e in entries if e["type"] == "topup"]
    [adjustment] = [e for e in entries if e["type"] == "adjustment"]
    assert adjustment["amount"] == "-10"
    assert adjustment["relatedTransactionId"] == topup["id"]
    assert (adjustment["balanceBefore"], adjustment["balanceAfter"]) == ("1", "-9")

    # the wallet now refuses to spend, and a redelivered dispute takes nothing more
    refused = api.post("/api/billing/charge", tokens["charge"],
                       json={"featureKey": "f", "idempotencyKey": "after", "items": stt_items("1")})
    assert refused.status_code == 402, refused.text
    deliver(api, engine, charge_refunded(None, payment, 1000, 1000), "ignored")
    assert wallet(api, tokens["admin"])["currentBalance"] == "-9"

    # a later payment repays the debt first
    deliver(api, engine, checkout_completed(tenant, _id("pi"), 2000), "processed")
    wait_balance(api, tokens["admin"], "11")
    verify(api, make_token, tenant)


def test_dispute_with_credits_left_does_not_flag(api, engine, tenant, tokens, make_token):
    payment = _id("pi")
    deliver(api, engine, checkout_completed(tenant, payment, 1000), "processed")
    deliver(api, engine, checkout_completed(tenant, _id("pi"), 500), "processed")
    wait_balance(api, tokens["admin"], "15")
    deliver(api, engine, dispute_created(payment, 1000), "processed")
    current = wait_balance(api, tokens["admin"], "5")
    assert current["flagged"] is False
    # the disputed payment's own grant is drawn first: the other payment's grant is intact
    assert [(g["amount"], g["remaining"]) for g in stripe_grants(current)] == [("5", "5")]
    verify(api, make_token, tenant)


def test_a_clawback_that_eats_into_held_credits_flags_the_wallet(api, engine, tenant, tokens, make_token):
    payment = _id("pi")
    deliver(api, engine, checkout_completed(tenant, payment, 1000), "processed")
    wait_balance(api, tokens["admin"], "10")
    hold = api.post("/api/billing/reservations", tokens["charge"],
                    json={"featureKey": "f", "amount": "8", "idempotencyKey": "hold"})
    assert hold.status_code == 200, hold.text
    top_up(api, tokens["admin"], "3")
    deliver(api, engine, charge_refunded(tenant, payment, 1000, 1000), "processed")
    current = wait_balance(api, tokens["admin"], "3")  # 3 left, but 8 are held: flagged, not stuck
    assert (current["reservedBalance"], current["availableBalance"], current["flagged"]) == ("8", "-5", True)
    verify(api, make_token, tenant)


# --- 7: events that change nothing -------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda t: checkout_completed(t, _id("pi"), 1000, currency="eur"),
    lambda t: payment_intent_succeeded(t, _id("pi"), 1000, currency="gbp"),
    lambda t: checkout_completed(t, _id("pi"), 1000, payment_status="unpaid"),
    lambda t: checkout_completed(None, _id("pi"), 1000),
    lambda t: checkout_completed(t, _id("pi"), 0),
    lambda t: make_event("customer.created", {"id": _id("cus"), "object": "customer", "metadata": {"tenantId": t}}),
    lambda t: make_event("invoice.paid", {"id": _id("in"), "object": "invoice", "amount_paid": 1000,
                                          "currency": "usd", "payment_intent": _id("pi"),
                                          "metadata": {"tenantId": t}}),
    lambda t: make_event("charge.refund.updated", {"id": _id("re"), "object": "refund", "amount": 1000,
                                                   "currency": "usd", "payment_intent": _id("pi")}),
], ids=["eur_checkout", "gbp_payment_intent", "unpaid_checkout", "no_tenant", "zero_amount", "customer_created",
        "invoice_paid", "refund_updated"])
def test_events_not_acted_on_are_acknowledged_and_change_nothing(api, engine, tenant, tokens, make):
    event = make(tenant)
    deliver(api, engine, event, "ignored")
    assert_untouched(api, tokens["admin"])


def test_foreign_currency_refund_does_not_claw_back_a_usd_payment(api, engine, tenant, tokens):
    payment = _id("pi")
    deliver(api, engine, checkout_completed(tenant, payment, 1000), "processed")
    wait_balance(api, tokens["admin"], "10")
    refund = charge_refunded(tenant, payment, 1000, 1000)
    refund["data"]["object"]["currency"] = "eur"
    deliver(api, engine, refund, "ignored")
    assert wallet(api, tokens["admin"])["currentBalance"] == "10"
    assert len(transactions(api, tokens["admin"])) == 1


@pytest.mark.parametrize("obj", [
    "not an object",
    {"payment_intent": "pi_test_malformed", "payment_status": "paid", "amount_total": 100, "currency": "usd",
     "metadata": "not a map"},
    {"payment_intent": "pi_test_malformed", "payment_status": "paid", "amount_total": 100, "currency": 840,
     "metadata": {}},
], ids=["object_not_a_map", "metadata_not_a_map", "currency_not_a_string"])
def test_malformed_signed_event_is_ignored_not_retried_forever(api, engine, tenant, tokens, obj):
    """A correctly signed event whose object has an unexpected shape is marked ignored; it must not
    crash the task and stay `received`, which the sweep would re-enqueue every minute for ever."""
    if isinstance(obj, dict) and obj.get("metadata") == {}:
        obj = {**obj, "metadata": {"tenantId": tenant}}
    deliver(api, engine, make_event("checkout.session.completed", obj), "ignored")
    assert_untouched(api, tokens["admin"])


# --- 8: tenant isolation ----------------------------------------------------------------------------

def test_events_for_one_tenant_never_touch_another(api, engine, tenant, tokens, make_token):
    other = f"t-{uuid.uuid4().hex[:12]}"
    other_admin = make_token(other, "billing.admin")
    other_payment = _id("pi")
    deliver(api, engine, checkout_completed(other, other_payment, 300), "processed")
    wait_balance(api, other_admin, "3")
    before = wallet(api, other_admin)
    before_entries = transactions(api, other_admin)

    payment = _id("pi")
    deliver(api, engine, checkout_completed(tenant, payment, 1000), "processed")
    wait_balance(api, tokens["admin"], "10")
    deliver(api, engine, charge_refunded(tenant, payment, 1000, 200), "processed")
    wait_balance(api, tokens["admin"], "8")
    deliver(api, engine, dispute_created(payment, 800), "processed")
    wait_balance(api, tokens["admin"], "0")
    # a refund of A's payment that names B is ignored (inconsistent metadata touches neither wallet)
    deliver(api, engine, charge_refunded(other, payment, 1000, 1000), "ignored")
    # and so is a refund of B's payment that names A
    deliver(api, engine, charge_refunded(tenant, other_payment, 300, 300), "ignored")

    assert wallet(api, other_admin) == before
    assert transactions(api, other_admin) == before_entries
    verify(api, make_token, tenant)
    verify(api, make_token, other)
    # and a tenant's admin token only sees its own wallet
    assert wallet(api, tokens["admin"])["tenantId"] == tenant
    assert stripe_grants(wallet(api, tokens["admin"])) == []


def test_a_payment_is_credited_once_even_if_a_second_event_names_another_tenant(api, engine, tenant, tokens,
                                                                                make_token):
    """One Stripe payment is one credit: a second credit event for the same payment intent that names
    a different tenant must not credit that tenant too (the disputes that follow name no tenant, so
    they could claw back only one of the two grants)."""
    other = f"t-{uuid.uuid4().hex[:12]}"
    other_admin = make_token(other, "billing.admin")
    payment = _id("pi")
    deliver(api, engine, checkout_completed(tenant, payment, 1000), "processed")
    wait_balance(api, tokens["admin"], "10")
    deliver(api, engine, payment_intent_succeeded(other, payment, 1000), "ignored")
    assert_untouched(api, other_admin)
    assert wallet(api, tokens["admin"])["currentBalance"] == "10"
