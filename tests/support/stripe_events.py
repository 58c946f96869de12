"""Stripe events as Stripe sends them (signed with the stacks' webhook secret), and watching how they were
handled."""
from __future__ import annotations

import time
import uuid
from typing import Any

import stripe
from sqlalchemy import select

from billing_core import exactjson
from billing_core.payments.tables import stripe_events
from tests.support.helpers import Api
from tests.support.stack import STRIPE_SECRET

WEBHOOK = "/api/billing/webhooks/stripe"


DEADLINE_SECONDS = 30


HANDLED = ("processed", "ignored", "waiting")


def _id(prefix: str) -> str:
    return f"{prefix}_test_{uuid.uuid4().hex}"


def make_event(event_type: str, obj: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {"id": event_id or _id("evt"), "object": "event", "api_version": "2024-06-20",
            "created": int(time.time()), "livemode": False, "pending_webhooks": 1, "type": event_type,
            "data": {"object": obj}}


def checkout_completed(tenant_id: str | None, payment: str, cents: int, *, currency: str = "usd",
                       payment_status: str = "paid") -> dict[str, Any]:
    metadata = {"tenantId": tenant_id} if tenant_id else {}
    return make_event("checkout.session.completed", {
        "id": _id("cs"), "object": "checkout.session", "mode": "payment", "status": "complete",
        "payment_status": payment_status, "payment_intent": payment, "amount_subtotal": cents,
        "amount_total": cents, "currency": currency, "metadata": metadata})


def payment_intent_succeeded(tenant_id: str, payment: str, cents: int, currency: str = "usd") -> dict[str, Any]:
    return make_event("payment_intent.succeeded", {
        "id": payment, "object": "payment_intent", "status": "succeeded", "amount": cents,
        "amount_received": cents, "currency": currency, "metadata": {"tenantId": tenant_id}})


def charge_refunded(tenant_id: str | None, payment: str, cents: int, refunded_cents: int) -> dict[str, Any]:
    metadata = {"tenantId": tenant_id} if tenant_id else {}
    return make_event("charge.refunded", {
        "id": _id("ch"), "object": "charge", "amount": cents, "amount_captured": cents,
        "amount_refunded": refunded_cents, "refunded": refunded_cents == cents, "currency": "usd",
        "payment_intent": payment, "metadata": metadata})


def dispute_created(payment: str, cents: int) -> dict[str, Any]:
    # a dispute's own metadata is empty: the payment intent alone names the payment
    return make_event("charge.dispute.created", {
        "id": _id("dp"), "object": "dispute", "amount": cents, "currency": "usd", "charge": _id("ch"),
        "payment_intent": payment, "reason": "fraudulent", "status": "needs_response", "metadata": {}})


def sign(payload: str, secret: str = STRIPE_SECRET, timestamp: int | None = None) -> str:
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    assert header.startswith("t=") and ",v1=" in header
    return header


def post_raw(api: Api, body: str, header: str | None) -> Any:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return api.post(WEBHOOK, data=body.encode("utf-8"), headers=headers)


def send(api: Api, event: dict[str, Any], *, duplicate: bool = False) -> None:
    body = exactjson.dumps(event)
    response = post_raw(api, body, sign(body))
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "duplicate": duplicate}


def event_row(engine, event_id: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(select(stripe_events).where(stripe_events.c.id == event_id)).one_or_none()
