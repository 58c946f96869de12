"""Auto top-up while Stripe is unreachable: localstripe of the faults stack stopped and started again."""
from __future__ import annotations

import re

import pytest

from tests.support.auto_topup import DEADLINE_SECONDS, attempts, charge, get_rule, intents_of, own_card, put_rule, wait_finished
from tests.support.helpers import assert_ledger_consistent, top_up, wallet
from tests.support.polling import eventually

pytestmark = pytest.mark.faults


def test_stripe_unreachable_is_retried_with_the_same_key_and_charges_once(live, api, tokens, tenant, make_token,
                                                                         stripe_client):
    card = own_card(api, tokens["admin"], stripe_client)
    top_up(api, tokens["admin"], "100")
    assert put_rule(api, tokens["admin"], card, rechargeTo="30").status_code == 200  # checked with Stripe
    live.stop_localstripe()
    try:
        charge(api, tokens["charge"], "950000")  # 95: 5 left, at or below 10
        pending = eventually(lambda: [
            a for a in attempts(api, tokens["admin"], tenant) if a["status"] == "pending" and a["stripeRequests"] >= 2],
            DEADLINE_SECONDS, what="two tries of the attempt")
        # a card cannot be checked while Stripe is away: saving a rule answers 503, and saves nothing
        refused = put_rule(api, tokens["admin"], card, rechargeTo="40")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
        setup = api.post("/api/billing/settings/payment-methods", tokens["admin"], json={})
        assert setup.status_code == 503 and setup.json()["error"]["code"] == "unavailable"
    finally:
        live.start_localstripe()
    [attempt] = wait_finished(api, tokens["admin"], tenant)
    assert attempt["id"] == pending[0]["id"] and attempt["status"] == "succeeded", attempt
    assert attempt["stripeRequests"] >= 3
    [intent] = intents_of(stripe_client, tenant)  # charged once
    assert intent.id == attempt["paymentIntentId"] and intent.amount == 2500
    assert intent.metadata.to_dict()["autoTopupAttemptId"] == attempt["id"]
    # every payment request that reached Stripe carried the attempt's id as its idempotency key
    keys = re.findall(r'POST /v1/payment_intents HTTP/1.1 \d+ idempotency_key="([^"]*)"', live.stripe_log.read_text())
    assert attempt["id"] in keys and keys.count(attempt["id"]) == 1
    assert wallet(api, tokens["admin"])["currentBalance"] == "30"
    assert get_rule(api, tokens["admin"])["rechargeTo"] == "30"
    assert_ledger_consistent(api, make_token, tenant)
