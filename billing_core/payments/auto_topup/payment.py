"""The one Stripe call of an auto top-up: an off-session, confirmed PaymentIntent for the saved
payment method, through the official `stripe` library (StripeClient, whose api base is
STRIPE_API_BASE: Stripe itself, or a local Stripe API server in tests).

Outcomes, as Stripe answers:
- `succeeded` → the amount received is credited;
- `requires_action` (3-D Secure), `requires_payment_method`, a card error or any other refusal →
  failed with Stripe's code (no retry: retrying a declined card is what the circuit breaker stops);
- a network error, a 5xx, a rate limit or an idempotent request still in flight → retry later with
  the same idempotency key, so Stripe performs the payment at most once however often it is asked;
- `processing` → looked at again later (by retrieving the payment intent, not by paying again).

Before a payment is created, the card is checked again: it must still be attached to the tenant's own
Stripe customer (customers.verify_rule). A card detached since, or a customer that is not the
tenant's, fails the attempt like a declined card (no payment is asked for).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import stripe

from billing_core import money
from billing_core.catalog import CURRENCY
from billing_core.db import UnitOfWork
from billing_core.payments.auto_topup.attempts import PaymentTry
from billing_core.payments.auto_topup.customers import StripeCustomers, StripeUnavailable, verify_rule

REQUEST_TIMEOUT_SECONDS = 20  # well inside the task's time limit


@dataclass(frozen=True)
class PaymentResult:
    outcome: str  # succeeded | failed | retry | processing
    payment_intent_id: str | None = None
    paid: Decimal | None = None
    code: str | None = None
    message: str | None = None


class StripeGateway:
    """One configured Stripe client per process. The library's own retries are off: a try that
    fails to reach Stripe is repeated by the task with a backoff, across processes and restarts."""

    def __init__(self, secret_key: str, api_base: str):
        self.client = stripe.StripeClient(
            secret_key, base_addresses={"api": api_base}, max_network_retries=0,
            http_client=stripe.new_default_http_client(timeout=REQUEST_TIMEOUT_SECONDS))
        self.customers = StripeCustomers(self.client)

    def pay(self, attempt: PaymentTry) -> PaymentResult:
        try:
            if attempt.payment_intent_id:
                intent = self.client.v1.payment_intents.retrieve(attempt.payment_intent_id)
            else:
                intent = self.client.v1.payment_intents.create(params={
                    "amount": attempt.amount_cents, "currency": CURRENCY.lower(),
                    "customer": attempt.customer_id, "payment_method": attempt.payment_method_id,
                    # the API takes payment_method_types; stripe 16's typed params leave it out
                    "payment_method_types": ["card"],  # type: ignore[typeddict-unknown-key]
                    "off_session": True, "confirm": True,
                    "metadata": {"tenantId": attempt.tenant_id, "autoTopupAttemptId": str(attempt.attempt_id)},
                }, options={"idempotency_key": attempt.idempotency_key})
        except stripe.CardError as exc:
            return PaymentResult("failed", _intent_of(exc), code=exc.code or "card_error",
                                 message=exc.user_message or str(exc))
        except (stripe.APIConnectionError, stripe.RateLimitError, stripe.IdempotencyError) as exc:
            return PaymentResult("retry", code=type(exc).__name__, message=str(exc) or type(exc).__name__)
        except stripe.APIError as exc:  # Stripe's own trouble (5xx)
            return PaymentResult("retry", code="api_error", message=str(exc) or "Stripe API error")
        except stripe.StripeError as exc:  # refused: a missing customer or payment method, a bad key...
            return PaymentResult("failed", _intent_of(exc), code=exc.code or _snake(type(exc).__name__),
                                 message=exc.user_message or str(exc))
        return _result(intent)


def pay_attempt(new_uow: Callable[[], UnitOfWork], gateway: StripeGateway, attempt: PaymentTry) -> PaymentResult:
    """One try at paying an attempt: when it would create the payment, only after Stripe confirms the
    rule's payment method is attached to the tenant's own customer."""
    if attempt.payment_intent_id is None:
        try:
            refusal = verify_rule(new_uow, gateway.customers, attempt.tenant_id, attempt.customer_id,
                                  attempt.payment_method_id)
        except StripeUnavailable as exc:
            return PaymentResult("retry", code="stripe_unreachable", message=str(exc))
        if refusal is not None:
            return PaymentResult("failed", code=refusal.code, message=refusal.message)
    return gateway.pay(attempt)


def _result(intent: Any) -> PaymentResult:
    status = intent.status
    if status == "succeeded":
        data = intent.to_dict()
        cents = data.get("amount_received") or data.get("amount")
        return PaymentResult("succeeded", intent.id, paid=money.normalize(Decimal(int(cents)).scaleb(-2)))
    if status == "processing":
        return PaymentResult("processing", intent.id, message="the payment is processing")
    if status == "requires_action":
        return PaymentResult("failed", intent.id, code="authentication_required",
                             message="the payment method needs the customer's authentication (3-D Secure)")
    error = intent.to_dict().get("last_payment_error") or {}
    return PaymentResult("failed", intent.id, code=error.get("code") or f"payment_intent_{status}",
                         message=error.get("message") or f"the payment intent is {status}")


def _intent_of(exc: stripe.StripeError) -> str | None:
    """The payment intent a refused payment created (Stripe names it in the error)."""
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    intent = (body.get("error") or {}).get("payment_intent")
    if isinstance(intent, dict):
        intent = intent.get("id")
    return intent if isinstance(intent, str) else None


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
