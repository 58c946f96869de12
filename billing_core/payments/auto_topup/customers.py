"""The tenant's own Stripe customer, and which cards auto top-up may charge.

LAD creates one Stripe customer per tenant (its metadata.tenantId names the tenant) and stores its id
here. Cards reach it only through SetupIntents LAD creates for that customer (POST
/settings/payment-methods, the portal's Settings page). An auto top-up rule may name only a payment
method attached to that customer: checked with Stripe when the rule is saved (rules.put_rule) and
again before every attempt pays (payment.pay_attempt), so a card detached since, or a customer whose
metadata names another tenant, stops the rule instead of being charged.

Rules saved before LAD owned the customers (migration 0015) start unverified; the minute scan checks
them (attempts.verify_saved). Such a rule's customer is adopted as the tenant's own when the tenant
has none yet and the customer's metadata.tenantId names the tenant (only LAD holds the Stripe key that
writes that metadata); any other customer is foreign and its rule is disabled.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import stripe
from sqlalchemy import text
from stripe.params import SetupIntentCreateParams

from billing_core.db import UnitOfWork

CUSTOMER_NOT_OWNED = "customer_not_owned"
PAYMENT_METHOD_NOT_ATTACHED = "payment_method_not_attached"
NO_CUSTOMER = "no_payment_method"


class StripeUnavailable(Exception):
    """Stripe did not answer (network, 5xx, rate limit, a refused key), or refused a request it should
    not have (say, the stored customer was deleted in Stripe's dashboard): nothing is known either way,
    and nothing is saved."""


@dataclass(frozen=True)
class NotOwned:
    """Why a customer or payment method may not be charged for a tenant: the request field it concerns,
    a stable code and a message that names nothing of another tenant."""
    field: str
    code: str
    message: str


@dataclass(frozen=True)
class CardSetup:
    customer_id: str
    setup_intent_id: str
    client_secret: str


@dataclass(frozen=True)
class Card:
    id: str
    brand: str
    last4: str
    exp_month: int | None
    exp_year: int | None


@contextmanager
def _asking_stripe() -> Iterator[None]:
    """Every Stripe error becomes StripeUnavailable (the web answers 503, an attempt tries again later);
    the look-ups that mean "not found" catch theirs first."""
    try:
        yield
    except stripe.StripeError as exc:
        raise StripeUnavailable(str(exc) or type(exc).__name__) from exc


class StripeCustomers:
    """The Stripe calls about a tenant's customer and its cards, through the official library."""

    def __init__(self, client: stripe.StripeClient):
        self.client = client

    def create_customer(self, tenant_id: str) -> str:
        with _asking_stripe():
            # Stripe keeps an idempotency key for a day: a retried creation is the same customer
            customer = self.client.v1.customers.create(
                params={"description": f"LAD Billing tenant {tenant_id}", "metadata": {"tenantId": tenant_id}},
                options={"idempotency_key": f"lad-tenant-customer:{tenant_id}"})
        return customer.id

    def create_setup_intent(self, customer_id: str, tenant_id: str) -> tuple[str, str]:
        """A SetupIntent that saves a card on the customer for off-session payments: (id, client secret)."""
        with _asking_stripe():
            params: SetupIntentCreateParams = {
                "customer": customer_id, "usage": "off_session",
                # the API takes payment_method_types; stripe 16's typed params leave it out
                "payment_method_types": ["card"],  # type: ignore[typeddict-unknown-key]
                "metadata": {"tenantId": tenant_id},
            }
            intent = self.client.v1.setup_intents.create(params=params)
        if intent.client_secret is None:  # Stripe always returns it to the secret key that made the intent
            raise StripeUnavailable("Stripe returned a SetupIntent without its client secret")
        return intent.id, intent.client_secret

    def customer_tenant(self, customer_id: str) -> str | None:
        """The tenant the customer's metadata names ("" for none); None when Stripe has no such customer."""
        with _asking_stripe():
            try:
                customer = self.client.v1.customers.retrieve(customer_id)
            except stripe.InvalidRequestError:
                return None
        data: dict[str, Any] = customer.to_dict()
        if data.get("deleted"):
            return None
        tenant = (data.get("metadata") or {}).get("tenantId")
        return tenant if isinstance(tenant, str) else ""

    def payment_method_customer(self, payment_method_id: str) -> str | None:
        """The customer the payment method is attached to; None when detached or unknown to Stripe."""
        with _asking_stripe():
            try:
                method = self.client.v1.payment_methods.retrieve(payment_method_id)
            except stripe.InvalidRequestError:
                return None
        customer = method.to_dict().get("customer")
        if isinstance(customer, dict):
            customer = customer.get("id")
        return customer if isinstance(customer, str) else None

    def cards(self, customer_id: str) -> list[Card]:
        with _asking_stripe():
            found = self.client.v1.payment_methods.list(params={"customer": customer_id, "type": "card", "limit": 20})
        cards = []
        for method in found.data:
            card = method.to_dict().get("card") or {}
            cards.append(Card(method.id, str(card.get("brand") or "card"), str(card.get("last4") or "????"),
                              card.get("exp_month"), card.get("exp_year")))
        return cards


# --- the tenant's customer -------------------------------------------------------------------------


def own_customer(uow: UnitOfWork, tenant_id: str) -> str | None:
    return uow.connection.execute(text("SELECT stripe_customer_id FROM stripe_customers WHERE tenant_id = :t"),
                                  {"t": tenant_id}).scalar_one_or_none()


def _store(uow: UnitOfWork, tenant_id: str, customer_id: str) -> str:
    """Store the tenant's customer unless it has one already; the stored one is returned either way."""
    uow.connection.execute(text("""
        INSERT INTO stripe_customers (tenant_id, stripe_customer_id) VALUES (:t, :c) ON CONFLICT (tenant_id) DO NOTHING
    """), {"t": tenant_id, "c": customer_id})
    stored = own_customer(uow, tenant_id)
    assert stored is not None
    return stored


def start_card_setup(uow: UnitOfWork, stripe_api: StripeCustomers, tenant_id: str) -> CardSetup:
    """A SetupIntent for the tenant's own customer, which is created in Stripe (metadata.tenantId) and
    stored on first use; commits (with whatever the caller wrote in this unit of work). The creation
    runs under a lock per tenant, so two first uses at once make one customer."""
    uow.connection.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                           {"k": f"stripe-customer:{tenant_id}"})
    customer_id = own_customer(uow, tenant_id)
    if customer_id is None:
        customer_id = _store(uow, tenant_id, stripe_api.create_customer(tenant_id))
    uow.commit()
    intent_id, client_secret = stripe_api.create_setup_intent(customer_id, tenant_id)
    return CardSetup(customer_id, intent_id, client_secret)


def cards_of(uow: UnitOfWork, stripe_api: StripeCustomers, tenant_id: str) -> list[Card] | None:
    """The cards attached to the tenant's own customer; None when it has no customer yet."""
    customer_id = own_customer(uow, tenant_id)
    return None if customer_id is None else stripe_api.cards(customer_id)


# --- what may be charged ---------------------------------------------------------------------------


def check_attached(stripe_api: StripeCustomers, tenant_id: str, customer_id: str,
                   payment_method_id: str) -> NotOwned | None:
    """None when Stripe says the customer is the tenant's (its metadata) and the payment method is
    attached to it. Raises StripeUnavailable when Stripe cannot say."""
    if stripe_api.customer_tenant(customer_id) != tenant_id:
        return NotOwned("stripeCustomerId", CUSTOMER_NOT_OWNED,
                        f"the Stripe customer {customer_id} is not this tenant's own customer")
    if stripe_api.payment_method_customer(payment_method_id) != customer_id:
        return NotOwned("stripePaymentMethodId", PAYMENT_METHOD_NOT_ATTACHED,
                        f"the payment method {payment_method_id} is not attached to this tenant's Stripe customer; "
                        "add the card with POST /settings/payment-methods (the portal's Settings page)")
    return None


def check_request(uow: UnitOfWork, stripe_api: StripeCustomers, tenant_id: str, customer_id: str | None,
                  payment_method_id: str) -> NotOwned | str:
    """Saving a rule: the customer, if named, must be the tenant's own, and the payment method attached
    to it. Returns the tenant's customer, or why not."""
    own = own_customer(uow, tenant_id)
    if customer_id is not None and customer_id != own:
        return NotOwned("stripeCustomerId", CUSTOMER_NOT_OWNED,
                        f"the Stripe customer {customer_id} is not this tenant's own customer"
                        + ("" if own else "; the tenant has none yet: POST /settings/payment-methods creates it"))
    if own is None:
        return NotOwned("stripePaymentMethodId", NO_CUSTOMER,
                        "this tenant has no saved card yet: add one with POST /settings/payment-methods "
                        "(the portal's Settings page)")
    return check_attached(stripe_api, tenant_id, own, payment_method_id) or own


def verify_rule(new_uow: Callable[[], UnitOfWork], stripe_api: StripeCustomers, tenant_id: str, customer_id: str,
                payment_method_id: str) -> NotOwned | None:
    """Before a payment, and for rules saved before LAD owned the customers: None when the rule's
    customer is the tenant's own and its payment method is attached to it. A rule saved before
    migration 0015 adopts its customer when the tenant has none and the metadata names the tenant."""
    with new_uow() as uow:
        own = own_customer(uow, tenant_id)
    if own is None and stripe_api.customer_tenant(customer_id) == tenant_id:
        with new_uow() as uow:
            own = _store(uow, tenant_id, customer_id)
            uow.commit()
    if own != customer_id:
        return NotOwned("stripeCustomerId", CUSTOMER_NOT_OWNED,
                        f"the Stripe customer {customer_id} is not this tenant's own customer")
    return check_attached(stripe_api, tenant_id, customer_id, payment_method_id)
