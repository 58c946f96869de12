"""Auto top-up settings, the tenant's payment methods, the operators' list of attempts, and recurring
allocations under /api/billing. Handlers parse, call billing_core, and answer."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Annotated, Any, Literal

import stripe
from flask import Response, current_app, request
from pydantic import Field
from spectree import Response as Documented
from sqlalchemy.exc import OperationalError

from billing_core import exactjson, logs
from billing_core.errors import NotFound, ValidationFailed
from billing_core.fields import Strict, TenantId
from billing_core.payments import stripe_events
from billing_core.payments.auto_topup import attempts, customers, rules
from billing_core.payments.auto_topup.payment import StripeGateway
from billing_core.payments.auto_topup.rules import AutoTopupRequest
from tasks.payments import check_auto_topup, process_stripe_event
from web.api.answers import Answer, DecimalString, Query, TenantQuery, Timestamp, Uuid, ok
from web.api.routing import BROKER_ERRORS, billing, documented
from web.auth import ADMIN, MANAGE, authenticate, managed_tenant, tenant_for
from web.errors import ApiError, ErrorResponse
from web.limits import rate_limited
from web.openapi import spec
from web.parsing import json_body, parse, parse_query
from web.runtime import settings, unit_of_work

log = logs.get(__name__)

# --- response models ------------------------------------------------------------------------------


class AutoTopupOut(Answer):
    tenantId: str
    enabled: bool
    status: Literal["active", "disabled"]
    disabledReason: str | None
    disabledAt: Timestamp | None
    threshold: DecimalString
    rechargeTo: DecimalString | None
    amount: DecimalString | None
    stripeCustomerId: str
    stripePaymentMethodId: str
    maxPerMonth: DecimalString | None
    cooldownSeconds: int
    spentThisMonth: DecimalString
    createdAt: Timestamp
    updatedAt: Timestamp


class AutoTopupResponse(Answer):
    success: Literal[True]
    autoTopup: AutoTopupOut


class PaymentMethodSetupRequest(Strict):
    tenantId: TenantId | None = Field(None, description="billing.admin only: the tenant to act for")


class SetupIntentOut(Answer):
    id: str = Field(description="the SetupIntent (seti_…)")
    clientSecret: str = Field(description="for Stripe.js (stripe.confirmCardSetup) in the tenant's browser; "
                                          "its payment_method, once confirmed, is the stripePaymentMethodId")


class PaymentMethodSetupResponse(Answer):
    success: Literal[True]
    stripeCustomerId: str = Field(description="the tenant's own Stripe customer, created by LAD "
                                              "(metadata.tenantId) on first use")
    setupIntent: SetupIntentOut


class AttemptOut(Answer):
    id: Uuid
    tenantId: str
    status: Literal["pending", "succeeded", "failed", "capped"]
    amount: DecimalString
    availableBefore: DecimalString
    threshold: DecimalString
    paymentIntentId: str | None
    failureCode: str | None
    failureMessage: str | None
    stripeRequests: int
    grantId: Uuid | None
    createdAt: Timestamp
    finishedAt: Timestamp | None


class AttemptsResponse(Answer):
    success: Literal[True]
    autoTopups: list[AttemptOut]


class WebhookResponse(Answer):
    received: Literal[True]
    duplicate: bool


class AttemptsQuery(Query):
    status: Literal["pending", "succeeded", "failed", "capped"] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 100
    tenantId: TenantId | None = None  # absent: the token's own tenant
    # true (billing.admin, without tenantId): every tenant's attempts
    allTenants: bool = False


# --- representations ------------------------------------------------------------------------------


def auto_topup_out(rule: rules.AutoTopupRule, spent: Decimal) -> AutoTopupOut:
    return AutoTopupOut(
        tenantId=rule.tenant_id, enabled=rule.enabled, status=rule.status, disabledReason=rule.disabled_reason,
        disabledAt=rule.disabled_at, threshold=rule.threshold, rechargeTo=rule.recharge_to, amount=rule.amount,
        stripeCustomerId=rule.stripe_customer_id, stripePaymentMethodId=rule.stripe_payment_method_id,
        maxPerMonth=rule.max_per_month, cooldownSeconds=rule.cooldown_seconds, spentThisMonth=spent,
        createdAt=rule.created_at, updatedAt=rule.updated_at)


def attempt_out(a: attempts.Attempt) -> AttemptOut:
    return AttemptOut(
        id=a.id, tenantId=a.tenant_id, status=a.status, amount=a.amount, availableBefore=a.available_before,
        threshold=a.threshold, paymentIntentId=a.payment_intent_id, failureCode=a.failure_code,
        failureMessage=a.failure_message, stripeRequests=a.stripe_requests, grantId=a.grant_id,
        createdAt=a.created_at, finishedAt=a.finished_at)


# --- auto top-up ----------------------------------------------------------------------------------


def _configured() -> None:
    if not configured():
        raise ApiError("unavailable", "auto top-up is not configured (STRIPE_SECRET_KEY)")


@billing.post("/settings/payment-methods")
@documented({200: PaymentMethodSetupResponse}, 404, 403, 503, json=PaymentMethodSetupRequest)
@rate_limited(MANAGE)
def post_payment_method() -> Response:
    """Start saving a card for auto top-up: a SetupIntent for the tenant's own Stripe customer (created by
    LAD with metadata.tenantId when it has none). The tenant confirms it with Stripe.js; the card is then
    attached to that customer, and its payment method may be named in PUT /settings/auto-topup.
    billing.manage for its own tenant, or billing.admin with tenantId."""
    body = json_body() if request.get_data(cache=True).strip() else {}
    _, tenant_id = managed_tenant(parse(PaymentMethodSetupRequest, body).tenantId)
    _configured()
    with unit_of_work() as uow, stripe_answering():
        setup = customers.start_card_setup(uow, stripe_gateway().customers, tenant_id)
    return ok(PaymentMethodSetupResponse, stripeCustomerId=setup.customer_id,
              setupIntent=SetupIntentOut(id=setup.setup_intent_id, clientSecret=setup.client_secret))


@billing.put("/settings/auto-topup")
@documented({200: AutoTopupResponse}, 404, 403, 503, json=AutoTopupRequest)
@rate_limited(MANAGE)
def put_auto_topup() -> Response:
    """When the available balance is at or below `threshold`, charge the saved Stripe payment method
    off-session for `rechargeTo` − available (or a fixed `amount`). The payment method must be attached to
    the tenant's own Stripe customer (POST /settings/payment-methods): checked with Stripe now and before
    every payment; anything else is 400 naming the field. Saving it enabled also turns it back on after a
    failed payment disabled it. billing.manage for its own tenant, or billing.admin."""
    principal = authenticate(MANAGE)
    _configured()  # 503 before the body is judged: nothing can be saved without a Stripe key
    command = parse(AutoTopupRequest, json_body())
    tenant_id = tenant_for(principal, command.tenantId)  # managed_tenant's rule, after the 503
    with unit_of_work() as uow, stripe_answering():
        rule = rules.put_rule(uow, tenant_id, command, stripe_gateway().customers)
        spent = rules.spent_this_month(uow, tenant_id)
    check_soon(tenant_id)
    return ok(AutoTopupResponse, autoTopup=auto_topup_out(rule, spent))


@billing.get("/settings/auto-topup")
@documented({200: AutoTopupResponse}, 403, 404, 503, query=TenantQuery)
@rate_limited(MANAGE)
def get_auto_topup() -> Response:
    _, tenant_id = managed_tenant(parse_query(TenantQuery).tenantId)
    _configured()
    with unit_of_work() as uow:
        rule = rules.get_rule(uow, tenant_id)
        spent = rules.spent_this_month(uow, tenant_id)
    if rule is None:
        raise NotFound("no auto top-up for this tenant")
    return ok(AutoTopupResponse, autoTopup=auto_topup_out(rule, spent))


@billing.get("/auto-topups")
@documented({200: AttemptsResponse}, 404, 403, query=AttemptsQuery)
@rate_limited(MANAGE)
def get_auto_topups() -> Response:
    """Auto top-up attempts, newest first, with status, amount, payment intent and failure code: the
    token's own tenant's (billing.manage), another tenant's (billing.admin with `tenantId`), or every
    tenant's (billing.admin with `allTenants=true`)."""
    query = parse_query(AttemptsQuery)
    if query.allTenants:
        authenticate(ADMIN)
        if query.tenantId is not None:
            raise ValidationFailed("allTenants", "give tenantId or allTenants=true, not both")
        with unit_of_work() as uow:
            found = attempts.list_every_tenants_attempts(uow, status=query.status, limit=query.limit)
        return ok(AttemptsResponse, autoTopups=[attempt_out(a) for a in found])
    _, tenant_id = managed_tenant(query.tenantId)
    with unit_of_work() as uow:
        found = attempts.list_attempts(uow, tenant_id, status=query.status, limit=query.limit)
    return ok(AttemptsResponse, autoTopups=[attempt_out(a) for a in found])


def stripe_gateway() -> StripeGateway:
    """The app's Stripe client (configured() first)."""
    found = current_app.extensions.get("lad_stripe")
    if found is None:
        configured_for = settings()
        if not configured_for.stripe_secret_key:  # callers ask configured() first
            raise ApiError("unavailable", "auto top-up is not configured (STRIPE_SECRET_KEY)")
        found = current_app.extensions["lad_stripe"] = StripeGateway(configured_for.stripe_secret_key,
                                                                      configured_for.stripe_api_base)
    return found


@contextmanager
def stripe_answering() -> Iterator[None]:
    """A Stripe that does not answer is the service's trouble, not the request's: 503."""
    try:
        yield
    except customers.StripeUnavailable as exc:
        log.warning("Stripe did not answer", error=str(exc))
        raise ApiError("unavailable", "Stripe did not answer; try again shortly") from exc


def configured() -> bool:
    """Auto top-up pays through Stripe: without STRIPE_SECRET_KEY it is unavailable (the API answers
    503, the portal says so)."""
    return bool(settings().stripe_secret_key)


def check_soon(tenant_id: str) -> None:
    """After a rule is saved (API or portal): a balance already at or below the new threshold is topped
    up now, not at the next scan. The rule is saved either way; the minute scan is the net."""
    try:
        check_auto_topup(tenant_id)
    except (*BROKER_ERRORS, OperationalError):
        log.exception("auto top-up check after saving the rule failed; the minute scan will", tenant_id=tenant_id)


# --- Stripe webhooks -----------------------------------------------------------------------------


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
@spec.validate(resp=Documented(HTTP_200=WebhookResponse, HTTP_400=ErrorResponse, HTTP_503=ErrorResponse),
               skip_validation=True, tags=["stripe"], security={})
def post_stripe_webhook() -> Response:
    """Stripe events: paid checkouts and payment intents credit a paid grant, refunds and disputes
    claw it back. Authenticated by the Stripe-Signature header, not a bearer token."""
    secret = settings().stripe_webhook_secret
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
                       {"field": "Stripe-Signature"}) from None
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
            log.warning("broker unavailable, Stripe event left for the sweep", stripe_event_id=event["id"], error=str(exc))
    return ok(WebhookResponse, received=True, duplicate=not new)
