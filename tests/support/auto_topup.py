"""Stripe (localstripe) through the official library, and the auto top-up endpoints, for the auto top-up,
fault and page tests."""
from __future__ import annotations

import uuid
from typing import Any

import stripe

from tests.support.helpers import stt_items
from tests.support.polling import eventually

DEADLINE_SECONDS = 60


GOOD_CARD, DECLINED_CARD = "4242424242424242", "4000000000000341"  # the second attaches, then declines


THREE_D_SECURE_CARD = "4000002760003184"  # needs the customer's authentication on every payment


def stripe_client(base: str) -> stripe.StripeClient:
    """The official library against localstripe at `base` (a stack's STRIPE_API_BASE)."""
    from tests.support.stack import STRIPE_API_KEY

    return stripe.StripeClient(STRIPE_API_KEY, base_addresses={"api": base}, max_network_retries=0)


def own_card(api, token: str, client: stripe.StripeClient, number: str = GOOD_CARD, *,
             attach_directly: bool = False) -> tuple[str, str]:
    """A card saved on the tenant's own Stripe customer as a tenant saves one: POST /settings/payment-methods
    (LAD creates the customer on first use), then the SetupIntent confirmed with the card, which is what
    Stripe.js does in the tenant's browser; or, for a card whose setup would need 3-D Secure, attached to
    that customer with the API. As (customer, payment method)."""
    response = api.post("/api/billing/settings/payment-methods", token, json={})
    assert response.status_code == 200, response.text
    customer, intent = response.json()["stripeCustomerId"], response.json()["setupIntent"]
    method = client.v1.payment_methods.create(params={
        "type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    if attach_directly:
        client.v1.payment_methods.attach(method.id, params={"customer": customer})
    else:
        confirmed = client.v1.setup_intents.confirm(
            intent["id"], params={"payment_method": method.id, "client_secret": intent["clientSecret"]})
        assert confirmed.status == "succeeded", confirmed
    return customer, method.id


def intents_of(client: stripe.StripeClient, tenant_id: str) -> list[Any]:
    return [pi for pi in client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
            if pi.metadata.to_dict().get("tenantId") == tenant_id]


def put_rule(api, token: str, card: tuple[str, str], **fields: Any):
    body = {"threshold": "10", "rechargeTo": "50", "stripeCustomerId": card[0], "stripePaymentMethodId": card[1],
            **fields}
    return api.request("PUT", "/api/billing/settings/auto-topup", token, json=body)


def get_rule(api, token: str) -> dict[str, Any]:
    response = api.get("/api/billing/settings/auto-topup", token)
    assert response.status_code == 200, response.text
    return response.json()["autoTopup"]


def attempts(api, admin: str, tenant_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/billing/auto-topups?tenantId={tenant_id}", admin)
    assert response.status_code == 200, response.text
    return response.json()["autoTopups"]


def wait_finished(api, admin: str, tenant_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The tenant's attempts once `count` exist and none is pending."""
    def probe() -> list[dict[str, Any]] | None:
        found = attempts(api, admin, tenant_id)
        return found if len(found) >= count and all(a["status"] != "pending" for a in found) else None
    return eventually(probe, DEADLINE_SECONDS, what=f"{count} finished auto top-up attempts")


def charge(api, token: str, seconds: str, key: str | None = None) -> None:
    """One settled charge of seconds × 0.0001 (10000 seconds = 1)."""
    response = api.post("/api/billing/charge?wait=30", token, json={
        "featureKey": "voice-agent", "idempotencyKey": key or f"c-{uuid.uuid4()}", "items": stt_items(seconds)})
    assert response.status_code == 200, response.text
    assert response.json()["transaction"] is not None, response.text
