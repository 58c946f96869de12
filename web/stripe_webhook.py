"""POST /api/billing/webhooks/stripe: verify the Stripe-Signature, store the event once, answer at
once; a Celery task applies it (billing_core.payments.stripe_events)."""
from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import stripe
from flask import Response, current_app, jsonify, request
from spectree import Response as Documented

from billing_core import exactjson
from billing_core.payments import stripe_events
from tasks.credits import process_stripe_event
from web import schemas
from web.api import BROKER_ERRORS, billing, unit_of_work
from web.errors import ApiError
from web.openapi import spec

log = logging.getLogger(__name__)
SIGNATURE_TOLERANCE_SECONDS = 300  # Stripe's default: an older signed payload is a replay
# Stripe's numbers are cents, counts and epoch seconds; anything beyond this is not from Stripe and
# would overflow PostgreSQL's numeric (jsonb) or every amount computed from it
MAX_NUMBER_DIGITS = 30


def _unstorable_number(event: Any) -> str | None:
    """The path of a non-finite or absurdly large number in the event, if any (walked with a stack:
    the payload's depth is the sender's choice)."""
    stack: list[tuple[Any, str]] = [(event, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Decimal):
            if not value.is_finite() or abs(value.adjusted()) > MAX_NUMBER_DIGITS:
                return path or "body"
        elif isinstance(value, dict):
            stack.extend((child, f"{path}.{key}" if path else str(key)) for key, child in value.items())
        elif isinstance(value, list):
            stack.extend((child, f"{path}[{index}]") for index, child in enumerate(value))
    return None


@billing.post("/webhooks/stripe")
@spec.validate(resp=Documented(HTTP_200=schemas.WebhookResponse, HTTP_400=schemas.ErrorResponse,
                               HTTP_503=schemas.ErrorResponse),
               skip_validation=True, tags=["stripe"], security={})
def post_stripe_webhook() -> Response:
    """Stripe events: paid checkouts and payment intents credit a paid grant, refunds and disputes
    claw it back. Authenticated by the Stripe-Signature header, not a bearer token."""
    secret = current_app.config["LAD_SETTINGS"].stripe_webhook_secret
    if not secret:
        raise ApiError("unavailable", "Stripe webhooks are not configured (STRIPE_WEBHOOK_SECRET)")
    payload = request.get_data()
    try:
        text = payload.decode("utf-8")
        stripe.WebhookSignature.verify_header(text, request.headers.get("Stripe-Signature"), secret,
                                              tolerance=SIGNATURE_TOLERANCE_SECONDS)
        event = exactjson.loads(text)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise ApiError("invalid_signature", f"the Stripe signature does not verify: {exc}",
                       {"field": "Stripe-Signature"}, status=400) from None
    except (ValueError, ArithmeticError, RecursionError):  # signed, but not JSON any Decimal can hold
        raise ApiError("validation_error", "not a JSON Stripe event", {"field": "body"}) from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event["id"]:
        raise ApiError("validation_error", "not a Stripe event", {"field": "id"})
    bad_number = _unstorable_number(event)
    if bad_number is not None:
        raise ApiError("validation_error", "a number in the event is not finite or out of range",
                       {"field": bad_number})
    with unit_of_work() as uow:
        new = stripe_events.record_event(uow, event)
    if new:
        try:
            process_stripe_event.apply_async(args=[event["id"]], retry=False)
        except BROKER_ERRORS as exc:  # stored: the Stripe sweep processes it once the broker is back
            log.warning("broker unavailable, Stripe event %s left for the sweep: %s", event["id"], exc)
    return jsonify({"received": True, "duplicate": not new})
