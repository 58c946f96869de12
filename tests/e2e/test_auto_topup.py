"""Auto top-up through Stripe, on the real stack: the code under test pays through the official
`stripe` library against localstripe (a stateful Stripe API server, a child process of the test
stack, STRIPE_API_BASE). The tests talk to localstripe through the same library to save cards (as
Stripe.js would confirm a tenant's SetupIntent), to make another tenant's customer, and to read back
the payment intents it holds."""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import stripe
from sqlalchemy import select

from billing_core import exactjson
from billing_core.payments.tables import stripe_events
from tests.support.auto_topup import (
    DEADLINE_SECONDS,
    DECLINED_CARD,
    GOOD_CARD,
    THREE_D_SECURE_CARD,
    attempts,
    charge,
    get_rule,
    intents_of,
    own_card,
    put_rule,
    wait_finished,
)
from tests.support.helpers import assert_ledger_consistent, top_up, wallet
from tests.support.polling import eventually
from tests.support.stack import STRIPE_SECRET

# --- Stripe (localstripe) through the official library ---------------------------------------------

def foreign_card(client: stripe.StripeClient, tenant_id: str | None = None) -> tuple[str, str]:
    """A customer made in Stripe by someone else (metadata.tenantId naming `tenant_id`, if given) with a card
    attached, as (customer, payment method): what an attacker names."""
    customer = client.v1.customers.create(params={
        "email": "finance@tenant.test", **({"metadata": {"tenantId": tenant_id}} if tenant_id else {})})
    method = client.v1.payment_methods.create(params={
        "type": "card", "card": {"number": GOOD_CARD, "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    client.v1.payment_methods.attach(method.id, params={"customer": customer.id})
    return customer.id, method.id




# --- the service ------------------------------------------------------------------------------------













def stripe_grants(api, token: str) -> list[dict[str, Any]]:
    return [g for g in wallet(api, token)["grants"] if g["source"] == "stripe"]


def scan_now() -> int:
    """Run the minute scan now, in this process, exactly as beat runs it."""
    from tasks.payments import scan_auto_topups

    return scan_auto_topups()


def alert_email(api, admin: str, address: str) -> None:
    response = api.request("PUT", "/api/billing/settings/alerts", admin,
                           json={"thresholds": ["0"], "email": address})
    assert response.status_code == 200, response.text


def notifications_of(api, admin: str, event_type: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/billing/notifications?type={event_type}", admin)
    assert response.status_code == 200, response.text
    return response.json()["notifications"]


# --- settings ---------------------------------------------------------------------------------------

def test_settings_are_validated_and_need_manage_or_admin(api, tokens, tenant, make_token, stripe_client):
    manage = make_token(tenant, "billing.manage")
    card = own_card(api, manage, stripe_client)
    bad = [
        ({"threshold": "-1"}, "threshold"),
        ({"threshold": "50", "rechargeTo": "50"}, "rechargeTo"),
        ({"rechargeTo": None, "amount": "0"}, "amount"),
        ({"rechargeTo": None, "amount": "10.005"}, "amount"),
        ({"amount": "10"}, "rechargeTo"),  # both
        ({"stripeCustomerId": "customer-1"}, "stripeCustomerId"),
        ({"stripePaymentMethodId": "tok_visa"}, "stripePaymentMethodId"),
        ({"maxPerMonth": "0"}, "maxPerMonth"),
        ({"threshold": "NaN"}, "threshold"),
        ({"cooldownSeconds": -1}, "cooldownSeconds"),
        ({"surprise": True}, "surprise"),
    ]
    for fields, field in bad:
        response = put_rule(api, manage, card, **fields)
        assert response.status_code == 400, (fields, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error" and field in exactjson.dumps(error["details"]), (fields, error)
    assert api.get("/api/billing/settings/auto-topup", manage).status_code == 404  # nothing was saved

    assert put_rule(api, tokens["view"], card).status_code == 403
    other = make_token(f"{tenant}-other", "billing.manage")
    assert put_rule(api, other, card, tenantId=tenant).status_code == 403  # manage never names another tenant

    top_up(api, tokens["admin"], "100")  # well above the threshold: saving it pays nothing
    response = put_rule(api, manage, card, maxPerMonth="200", cooldownSeconds=60)
    assert response.status_code == 200, response.text
    rule = response.json()["autoTopup"]
    assert rule["status"] == "active" and rule["enabled"] is True and rule["disabledReason"] is None
    assert (rule["threshold"], rule["rechargeTo"], rule["amount"], rule["maxPerMonth"]) == ("10", "50", None, "200")
    assert rule["cooldownSeconds"] == 60 and rule["spentThisMonth"] == "0"
    assert get_rule(api, tokens["admin"]) == rule
    assert attempts(api, tokens["admin"], tenant) == []
    # billing.manage reads its own tenant's attempts (CONTRACT.md, "Operator lists default to the token's tenant")
    assert api.get("/api/billing/auto-topups", manage).json()["autoTopups"] == []
    assert api.get(f"/api/billing/auto-topups?tenantId={tenant}-other", manage).status_code == 403


# --- issue 25, finding 1: only the tenant's own customer and its cards --------------------------------

def test_a_rule_may_name_only_a_card_attached_to_the_tenants_own_stripe_customer(api, tokens, tenant, make_token,
                                                                                 stripe_client):
    """The attack of issue 25: tenant-a's admin names tenant-b's customer and card. Refused (400 naming the
    field), nothing saved, nothing paid; only a card saved through LAD's SetupIntent for tenant-a's own
    customer is accepted."""
    victim = f"{tenant}-b"
    made_for_victim = foreign_card(stripe_client, victim)  # metadata.tenantId names the victim
    manage = make_token(tenant, "billing.manage")
    top_up(api, tokens["admin"], "100")
    attack = {"threshold": "150", "amount": "25", "maxPerMonth": "25"}

    def refused(card: tuple[str | None, str], field: str) -> None:
        body = {**attack, "stripePaymentMethodId": card[1],
                **({"stripeCustomerId": card[0]} if card[0] else {})}
        response = api.request("PUT", "/api/billing/settings/auto-topup", manage, json=body)
        assert response.status_code == 400, (card, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error" and error["details"]["field"] == field, error
        assert victim not in error["message"], "the refusal names nothing of the other tenant"

    refused(made_for_victim, "stripeCustomerId")  # the issue's reproduction: 200, and a paid grant of 25
    refused((None, made_for_victim[1]), "stripePaymentMethodId")  # tenant-a has no customer of its own yet
    victims_card = own_card(api, make_token(victim, "billing.manage"), stripe_client)  # saved through LAD
    refused(victims_card, "stripeCustomerId")
    refused((None, victims_card[1]), "stripePaymentMethodId")

    # tenant-a's own customer: created by LAD with metadata.tenantId, once, with a SetupIntent to save a card
    first = api.post("/api/billing/settings/payment-methods", manage, json={})
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"success", "stripeCustomerId", "setupIntent"} and body["success"] is True
    assert set(body["setupIntent"]) == {"id", "clientSecret"}
    assert body["setupIntent"]["clientSecret"].startswith(body["setupIntent"]["id"])
    own = body["stripeCustomerId"]
    assert stripe_client.v1.customers.retrieve(own).metadata.to_dict() == {"tenantId": tenant}
    intent = stripe_client.v1.setup_intents.retrieve(body["setupIntent"]["id"])
    assert intent.customer == own and intent.usage == "off_session"
    again = api.post("/api/billing/settings/payment-methods", tokens["admin"], json={"tenantId": tenant})
    assert again.json()["stripeCustomerId"] == own  # one customer per tenant (an operator's request too)
    assert api.post("/api/billing/settings/payment-methods", make_token(victim, "billing.manage"),
                    json={"tenantId": tenant}).status_code == 403
    assert api.post("/api/billing/settings/payment-methods", tokens["view"], json={}).status_code == 403

    refused((own, victims_card[1]), "stripePaymentMethodId")  # the victim's card on a's own customer: no
    refused((None, victims_card[1]), "stripePaymentMethodId")
    refused((victims_card[0], victims_card[1]), "stripeCustomerId")
    assert api.get("/api/billing/settings/auto-topup", manage).status_code == 404  # nothing was saved
    assert attempts(api, tokens["admin"], tenant) == [] and intents_of(stripe_client, tenant) == []
    assert wallet(api, tokens["admin"])["currentBalance"] == "100"

    card = own_card(api, manage, stripe_client)
    assert card[0] == own
    response = api.request("PUT", "/api/billing/settings/auto-topup", manage,
                           json={"threshold": "10", "rechargeTo": "50", "stripePaymentMethodId": card[1]})
    assert response.status_code == 200, response.text
    rule = response.json()["autoTopup"]
    assert (rule["stripeCustomerId"], rule["stripePaymentMethodId"], rule["status"]) == (own, card[1], "active")


def test_before_each_payment_a_detached_card_or_a_customer_of_another_tenant_stops_the_rule(
        api, tokens, tenant, make_token, stripe_client):
    address = f"finance-{tenant}@tenant.test"
    alert_email(api, tokens["admin"], address)
    card = own_card(api, tokens["admin"], stripe_client)
    top_up(api, tokens["admin"], "100")
    assert put_rule(api, tokens["admin"], card).status_code == 200  # checked with Stripe: attached now
    stripe_client.v1.payment_methods.detach(card[1])  # … and detached since
    charge(api, tokens["charge"], "950000")  # 95: 5 left, at or below 10

    [attempt] = wait_finished(api, tokens["admin"], tenant)
    assert attempt["status"] == "failed" and attempt["failureCode"] == "payment_method_not_attached", attempt
    assert attempt["paymentIntentId"] is None and intents_of(stripe_client, tenant) == []
    rule = get_rule(api, tokens["admin"])
    assert rule["status"] == "disabled" and "payment_method_not_attached" in rule["disabledReason"]
    [notification] = notifications_of(api, tokens["admin"], "auto_topup.failed")
    assert notification["payload"]["failureCode"] == "payment_method_not_attached"

    # a customer whose metadata names another tenant by the time of the payment
    card = own_card(api, tokens["admin"], stripe_client)
    top_up(api, tokens["admin"], "100")
    assert put_rule(api, tokens["admin"], card).status_code == 200
    stripe_client.v1.customers.update(card[0], params={"metadata": {"tenantId": f"{tenant}-b"}})
    charge(api, tokens["charge"], "1000000")  # 100: 5 left
    found = wait_finished(api, tokens["admin"], tenant, count=2)
    assert [(a["status"], a["failureCode"]) for a in found] == [
        ("failed", "customer_not_owned"), ("failed", "payment_method_not_attached")], found
    assert intents_of(stripe_client, tenant) == []
    assert "customer_not_owned" in get_rule(api, tokens["admin"])["disabledReason"]
    assert len(notifications_of(api, tokens["admin"], "auto_topup.failed")) == 2
    assert wallet(api, tokens["admin"])["currentBalance"] == "5"


def test_a_customer_deleted_in_stripe_stops_the_rule_before_paying(api, tokens, tenant, stripe_client):
    card = own_card(api, tokens["admin"], stripe_client)
    top_up(api, tokens["admin"], "100")
    assert put_rule(api, tokens["admin"], card).status_code == 200
    stripe_client.v1.customers.delete(card[0])  # e.g. from Stripe's dashboard
    charge(api, tokens["charge"], "950000")
    [attempt] = wait_finished(api, tokens["admin"], tenant)
    assert attempt["status"] == "failed" and attempt["failureCode"] == "customer_not_owned", attempt
    assert intents_of(stripe_client, tenant) == [] and get_rule(api, tokens["admin"])["status"] == "disabled"


def test_rules_saved_before_tenants_owned_their_customer_are_checked_by_the_minute_scan(api, tokens, tenant, make_token,
                                                                                       stripe_client, engine):
    """Rules saved before migration 0015 are unverified. The scan checks each: one naming a customer of
    another tenant is disabled and notified before it is ever paid; one naming a customer made for this
    tenant (metadata.tenantId) is kept, and that customer becomes the tenant's own."""
    from sqlalchemy import text

    alert_email(api, tokens["admin"], f"finance-{tenant}@tenant.test")
    legit = f"{tenant}-c"
    legit_admin = make_token(legit, "billing.admin")
    top_up(api, tokens["admin"], "5")  # at or below the threshold: on today's main the scan pays
    top_up(api, legit_admin, "100")
    foreign, legacy = foreign_card(stripe_client, f"{tenant}-b"), foreign_card(stripe_client, legit)
    with engine.begin() as connection:
        for tenant_id, (customer, method) in ((tenant, foreign), (legit, legacy)):
            connection.execute(text("""
                INSERT INTO auto_topup_settings (tenant_id, enabled, threshold, recharge_to, stripe_customer_id,
                    stripe_payment_method_id, cooldown_seconds, created_at, updated_at)
                VALUES (:t, true, 10, 50, :c, :pm, 300, now(), now())
            """), {"t": tenant_id, "c": customer, "pm": method})
    scan_now()

    rule = eventually(lambda: get_rule(api, tokens["admin"]), DEADLINE_SECONDS, what="the rule checked",
                      until=lambda r: r["status"] == "disabled")
    assert "customer_not_owned" in rule["disabledReason"]
    [notification] = notifications_of(api, tokens["admin"], "auto_topup.failed")
    assert notification["payload"]["failureCode"] == "customer_not_owned"
    assert scan_now() == 0
    assert intents_of(stripe_client, tenant) == [] and wallet(api, tokens["admin"])["currentBalance"] == "5"
    assert [a for a in attempts(api, tokens["admin"], tenant) if a["status"] == "succeeded"] == []

    kept = get_rule(api, legit_admin)
    assert kept["status"] == "active" and kept["stripeCustomerId"] == legacy[0]
    adopted = api.post("/api/billing/settings/payment-methods", legit_admin, json={})
    assert adopted.json()["stripeCustomerId"] == legacy[0]


# --- the trigger -----------------------------------------------------------------------------------

def test_a_charge_crossing_the_threshold_recharges_to_the_target_once(api, tokens, tenant, make_token,
                                                                      stripe_client, engine):
    card = own_card(api, tokens["admin"], stripe_client)
    top_up(api, tokens["admin"], "12")
    assert put_rule(api, tokens["admin"], card).status_code == 200
    charge(api, tokens["charge"], "50000")  # 5: available 7, at or below 10

    [attempt] = wait_finished(api, tokens["admin"], tenant)
    assert attempt["status"] == "succeeded", attempt
    assert attempt["amount"] == "43" and attempt["availableBefore"] == "7" and attempt["threshold"] == "10"
    assert wallet(api, tokens["admin"])["currentBalance"] == "50"
    [intent] = intents_of(stripe_client, tenant)
    assert intent.id == attempt["paymentIntentId"] and intent.status == "succeeded" and intent.amount == 4300
    assert intent.customer == card[0] and intent.payment_method == card[1]
    assert intent.metadata.to_dict() == {"tenantId": tenant, "autoTopupAttemptId": attempt["id"]}
    [grant] = stripe_grants(api, tokens["admin"])
    assert grant["id"] == attempt["grantId"] and grant["kind"] == "paid" and grant["amount"] == "43"
    assert get_rule(api, tokens["admin"])["spentThisMonth"] == "43"

    # the payment_intent.succeeded webhook Stripe sends for it later (signed with the endpoint secret)
    # adds nothing: the payment intent keys the grant
    event = {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": "payment_intent.succeeded",
             "created": int(time.time()),
             "data": {"object": {"id": intent.id, "object": "payment_intent", "amount": 4300, "amount_received": 4300,
                                 "currency": "usd", "status": "succeeded",
                                 "metadata": {"tenantId": tenant, "autoTopupAttemptId": attempt["id"]}}}}
    body = exactjson.dumps(event)
    response = api.post("/api/billing/webhooks/stripe", data=body.encode(), headers={
        "Content-Type": "application/json",
        "Stripe-Signature": stripe.WebhookSignature.generate_signature_header(body, STRIPE_SECRET)})
    assert response.status_code == 200, response.text

    def handled() -> Any:
        with engine.connect() as connection:
            row = connection.execute(select(stripe_events).where(stripe_events.c.id == event["id"])).one()
        return row if row.status != "received" else None
    row = eventually(handled, DEADLINE_SECONDS, what="the webhook handled")
    assert row.status == "ignored" and "credited already" in row.detail
    assert wallet(api, tokens["admin"])["currentBalance"] == "50"
    assert len(stripe_grants(api, tokens["admin"])) == 1
    # the auto top-up's payment has its receipt (the operator's paid top-up of 12 has the other), once
    receipts = api.get("/api/billing/invoices?type=receipt", tokens["admin"]).json()["invoices"]
    assert sorted((r["source"], r["gross"], r["grantId"] if r["source"] == "stripe" else None) for r in receipts) == [
        ("stripe", "43", grant["id"]), ("topup", "12", None)]
    assert scan_now() == 0 and len(attempts(api, tokens["admin"], tenant)) == 1
    assert_ledger_consistent(api, make_token, tenant)
    assert 'lad_auto_topup_attempts_total{outcome="succeeded"}' in api.get("/metrics").text


def test_fifty_concurrent_crossing_charges_give_one_attempt_and_one_grant(api, tokens, tenant, make_token,
                                                                          stripe_client):
    card = own_card(api, tokens["admin"], stripe_client)
    top_up(api, tokens["admin"], "20")
    assert put_rule(api, tokens["admin"], card, rechargeTo="100").status_code == 200
    with ThreadPoolExecutor(max_workers=25) as pool:  # 50 × 0.25: every one of the last 41 is below 10
        list(pool.map(lambda i: charge(api, tokens["charge"], "2500", f"burst-{i}"), range(50)))

    [attempt] = wait_finished(api, tokens["admin"], tenant)
    assert attempt["status"] == "succeeded", attempt
    assert scan_now() == 0  # cooldown (default 300 s) and a balance far above the threshold
    assert len(attempts(api, tokens["admin"], tenant)) == 1
    assert len(intents_of(stripe_client, tenant)) == 1
    [grant] = stripe_grants(api, tokens["admin"])
    assert Decimal(grant["amount"]) == Decimal(attempt["amount"])
    # 20 − 12.5 + the recharge: whatever the attempt saw, it recharged once to at least 100 − what came after
    assert Decimal(wallet(api, tokens["admin"])["currentBalance"]) == Decimal("7.5") + Decimal(attempt["amount"])
    assert_ledger_consistent(api, make_token, tenant)


# --- the circuit breaker -----------------------------------------------------------------------------

def test_a_declined_card_fails_once_disables_and_notifies_until_enabled_again(api, tokens, tenant, make_token,
                                                                             stripe_client, smtp_inbox):
    address = f"finance-{tenant}@tenant.test"
    alert_email(api, tokens["admin"], address)
    declined = own_card(api, tokens["admin"], stripe_client, DECLINED_CARD)
    top_up(api, tokens["admin"], "5")
    assert put_rule(api, tokens["admin"], declined).status_code == 200  # already below: an attempt at once

    [attempt] = wait_finished(api, tokens["admin"], tenant)
    assert attempt["status"] == "failed" and attempt["failureCode"] == "card_declined", attempt
    assert attempt["grantId"] is None
    rule = get_rule(api, tokens["admin"])
    assert rule["status"] == "disabled" and rule["enabled"] is False and "card_declined" in rule["disabledReason"]
    assert wallet(api, tokens["admin"])["currentBalance"] == "5" and stripe_grants(api, tokens["admin"]) == []
    message = smtp_inbox.wait_for(lambda m: address in m.envelope_to and "Auto top-up failed" in m["Subject"])
    assert "card_declined" in message.get_content()
    [notification] = notifications_of(api, tokens["admin"], "auto_topup.failed")
    assert notification["payload"]["failureCode"] == "card_declined"
    assert notification["payload"]["attemptId"] == attempt["id"]

    charge(api, tokens["charge"], "10000")  # later charges and the minute scan: no second attempt
    assert scan_now() == 0
    assert len(attempts(api, tokens["admin"], tenant)) == 1

    # an administrator saves it enabled again (with a working card): one new attempt
    good = own_card(api, tokens["admin"], stripe_client)
    response = put_rule(api, make_token(tenant, "billing.manage"), good)
    assert response.status_code == 200 and response.json()["autoTopup"]["disabledReason"] is None
    found = wait_finished(api, tokens["admin"], tenant, count=2)
    assert [a["status"] for a in found] == ["succeeded", "failed"]
    assert found[0]["amount"] == "46" and wallet(api, tokens["admin"])["currentBalance"] == "50"
    assert_ledger_consistent(api, make_token, tenant)


def test_a_card_that_needs_3d_secure_fails_as_authentication_required(api, tokens, tenant, stripe_client):
    card = own_card(api, tokens["admin"], stripe_client, THREE_D_SECURE_CARD, attach_directly=True)
    top_up(api, tokens["admin"], "5")
    assert put_rule(api, tokens["admin"], card).status_code == 200
    [attempt] = wait_finished(api, tokens["admin"], tenant)
    assert attempt["status"] == "failed" and attempt["failureCode"] == "authentication_required", attempt
    [intent] = intents_of(stripe_client, tenant)
    assert intent.status == "requires_action" and attempt["paymentIntentId"] == intent.id
    assert get_rule(api, tokens["admin"])["status"] == "disabled"
    assert wallet(api, tokens["admin"])["currentBalance"] == "5"


def test_without_a_stripe_key_auto_top_up_answers_503(live, tenant):

    from billing_core.bootstrap import Settings
    from tests.support.stack import TEST_SECRET
    from web.app import create_app
    from web.auth import TokenSettings, issue_token

    tokens = TokenSettings(TEST_SECRET, None, None, None)
    app = create_app({"LAD_SETTINGS": Settings().model_copy(update={"stripe_secret_key": None}), "LAD_TOKENS": tokens})
    token = issue_token(tokens, tenant_id=tenant, capabilities=["billing.manage"])
    with app.test_client() as client:
        headers = {"Authorization": f"Bearer {token}"}
        for response in (client.get("/api/billing/settings/auto-topup", headers=headers),
                         client.put("/api/billing/settings/auto-topup", headers=headers, json={"threshold": "1"})):
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.get_json()["error"]["code"] == "unavailable"




# --- guards -----------------------------------------------------------------------------------------

def test_max_per_month_caps_and_notifies_once(api, tokens, tenant, make_token, stripe_client, smtp_inbox):
    alert_email(api, tokens["admin"], f"finance-{tenant}@tenant.test")
    card = own_card(api, tokens["admin"], stripe_client)
    top_up(api, tokens["admin"], "5")
    assert put_rule(api, tokens["admin"], card, rechargeTo=None, amount="20", maxPerMonth="30",
                    cooldownSeconds=0).status_code == 200
    [first] = wait_finished(api, tokens["admin"], tenant)
    assert first["status"] == "succeeded" and first["amount"] == "20"  # 25 now

    charge(api, tokens["charge"], "160000")  # 16: 9 left; another 20 would make 40 > 30 this month
    found = wait_finished(api, tokens["admin"], tenant, count=2)
    assert [a["status"] for a in found] == ["capped", "succeeded"], found
    assert found[0]["failureCode"] == "max_per_month" and found[0]["paymentIntentId"] is None
    charge(api, tokens["charge"], "10000")
    assert scan_now() == 0
    assert len(attempts(api, tokens["admin"], tenant)) == 2  # capped once a month
    [notification] = notifications_of(api, tokens["admin"], "auto_topup.capped")
    assert notification["payload"]["maxPerMonth"] == "30" and notification["payload"]["spentThisMonth"] == "20"
    assert get_rule(api, tokens["admin"])["status"] == "active"  # a cap is not a failure
    assert len(intents_of(stripe_client, tenant)) == 1
    assert wallet(api, tokens["admin"])["currentBalance"] == "8"


def test_cooldown_separates_successes(api, tokens, tenant, make_token, stripe_client):
    card = own_card(api, tokens["admin"], stripe_client)
    top_up(api, tokens["admin"], "5")
    assert put_rule(api, tokens["admin"], card, rechargeTo=None, amount="20", cooldownSeconds=3600).status_code == 200
    [first] = wait_finished(api, tokens["admin"], tenant)
    assert first["status"] == "succeeded"
    charge(api, tokens["charge"], "160000")  # 9 left, within the cooldown
    assert scan_now() == 0
    assert len(attempts(api, tokens["admin"], tenant)) == 1

    # once the cooldown is over (here: a shorter one saved, which evaluates at once), it recharges
    assert put_rule(api, tokens["admin"], card, rechargeTo=None, amount="20", cooldownSeconds=0).status_code == 200
    found = wait_finished(api, tokens["admin"], tenant, count=2)
    assert [a["status"] for a in found] == ["succeeded", "succeeded"]
    assert wallet(api, tokens["admin"])["currentBalance"] == "29"


def test_no_attempt_while_the_wallet_is_blocked(api, tokens, tenant, make_token, stripe_client):
    card = own_card(api, tokens["admin"], stripe_client)
    top_up(api, tokens["admin"], "5")
    response = api.request("PATCH", "/api/billing/wallet", tokens["admin"], json={"status": "blocked"})
    assert response.status_code == 200, response.text
    assert put_rule(api, tokens["admin"], card).status_code == 200
    assert scan_now() == 0
    assert attempts(api, tokens["admin"], tenant) == [] and intents_of(stripe_client, tenant) == []

    response = api.request("PATCH", "/api/billing/wallet", tokens["admin"], json={"status": "active"})
    assert response.status_code == 200, response.text
    scan_now()
    [attempt] = wait_finished(api, tokens["admin"], tenant)
    assert attempt["status"] == "succeeded" and wallet(api, tokens["admin"])["currentBalance"] == "50"


# --- recurring allocations -------------------------------------------------------------------------

def test_allocations_grant_once_per_period_under_concurrent_beat_runs(api, tokens, tenant, make_token, engine):
    from datetime import datetime, timedelta, timezone

    from billing_core.db import UnitOfWork
    from billing_core.ledger import allocations

    assert api.request("PUT", "/api/billing/allocations/monthly", tokens["charge"],
                       json={"amount": "100"}).status_code == 403
    bad = api.request("PUT", "/api/billing/allocations/monthly", tokens["admin"], json={"amount": "0"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "amount"
    response = api.request("PUT", "/api/billing/allocations/monthly", tokens["admin"],
                           json={"amount": "100", "kind": "promotional", "period": "month"})
    assert response.status_code == 200, response.text
    allocation = response.json()["allocation"]
    assert allocation["expiresAtPeriodEnd"] is True and allocation["amount"] == "100"
    now = datetime.now(timezone.utc)
    start, end = allocations.period_bounds(now)
    assert allocation["lastPeriodGranted"].startswith(start.strftime("%Y-%m-01T00:00:00"))

    def grants() -> list[dict[str, Any]]:
        return [g for g in wallet(api, tokens["admin"])["grants"] if g["source"] == "allocation"]
    [grant] = grants()
    assert grant["kind"] == "promotional" and grant["amount"] == "100"
    assert grant["expiresAt"].startswith(end.strftime("%Y-%m-01T00:00:00"))  # the period's end

    def new_uow() -> UnitOfWork:
        return UnitOfWork(engine)

    def runs(at: datetime) -> list[int]:
        barrier = threading.Barrier(6)

        def one(_: int) -> int:
            barrier.wait()
            return allocations.grant_due(new_uow, at)
        with ThreadPoolExecutor(max_workers=6) as pool:
            return list(pool.map(one, range(6)))

    assert sum(runs(now)) == 0  # this month's was granted when it was created
    # 00:05 on the 1st of next month, six beat runs at once: one grant
    found = runs(end + timedelta(minutes=5))
    assert sum(found) == 1
    with engine.connect() as connection:
        from sqlalchemy import text

        rows = connection.execute(text(
            "SELECT period_start FROM allocation_grants WHERE tenant_id = :t ORDER BY period_start"), {"t": tenant}).all()
    assert [r.period_start for r in rows] == [start, end]
    assert len(grants()) == 2

    # a period that has ended: its grant expires at the period's end (here already past)
    earlier = (start - timedelta(days=1))
    assert allocations.grant_due(new_uow, earlier) >= 1
    past = [g for g in grants() if g["expiresAt"] and g["expiresAt"].startswith(start.strftime("%Y-%m-01"))]
    assert past == []  # expired on reading, as the expiry job would
    expiries = api.get("/api/billing/transactions?type=expiry", tokens["admin"]).json()["transactions"]
    assert [e["amount"] for e in expiries] == ["-100"]

    preview = api.get("/api/billing/invoices/preview", tokens["admin"]).json()["invoice"]
    assert Decimal(preview["totalCredits"]) >= Decimal("100")
    listed = api.get("/api/billing/allocations", tokens["admin"]).json()["allocations"]
    assert [a["name"] for a in listed] == ["monthly"]
    assert api.request("DELETE", "/api/billing/allocations/monthly", tokens["admin"]).status_code == 200
    assert api.get("/api/billing/allocations/monthly", tokens["admin"]).status_code == 404
    assert_ledger_consistent(api, make_token, tenant)


def test_a_pending_attempt_whose_message_was_lost_is_sent_again_by_the_scan(api, tokens, tenant, make_token,
                                                                           stripe_client, engine):
    from sqlalchemy import text

    card = own_card(api, tokens["admin"], stripe_client)
    top_up(api, tokens["admin"], "100")
    assert put_rule(api, tokens["admin"], card).status_code == 200
    lost = uuid.uuid4()  # committed, but its message never reached the broker
    with engine.begin() as connection:
        connection.execute(text("""
            INSERT INTO auto_topup_attempts (tenant_id, id, status, amount, available_before, threshold, month,
                                             next_try_at)
            VALUES (:t, :id, 'pending', 15, 5, 10, date_trunc('month', now() AT TIME ZONE 'UTC')::date,
                    now() - interval '1 minute')
        """), {"t": tenant, "id": lost})
    assert scan_now() >= 1
    [attempt] = wait_finished(api, tokens["admin"], tenant)
    assert attempt["id"] == str(lost) and attempt["status"] == "succeeded" and attempt["stripeRequests"] == 1
    assert wallet(api, tokens["admin"])["currentBalance"] == "115"
    assert_ledger_consistent(api, make_token, tenant)
