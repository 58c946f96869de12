"""A tenant's auto top-up rule: when the available balance is at or below `threshold`, pay
`rechargeTo` − available (or a fixed `amount`) with a card saved on the tenant's own Stripe customer
(customers.py: the rule may name no other).

The rule's row is also the lock every evaluation of the tenant takes first (attempts.evaluate), so
saving a rule and evaluating it never interleave."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import Field
from sqlalchemy import text

from billing_core import money
from billing_core.db import UnitOfWork
from billing_core.errors import ValidationFailed
from billing_core.fields import NonNegativeAmount, PositiveAmount, Strict, TenantId
from billing_core.payments.auto_topup.customers import NotOwned, StripeCustomers, check_request
from billing_core.payments.tables import auto_topup_settings

DEFAULT_COOLDOWN_SECONDS = 300
CENT = Decimal("0.01")  # Stripe charges whole cents; 1 credit = 1 USD
# Stripe's object ids: a prefix and an alphanumeric tail
StripeCustomerId = Annotated[str, Field(pattern=r"^cus_[A-Za-z0-9]{1,250}$")]
StripePaymentMethodId = Annotated[str, Field(pattern=r"^(pm|card|src)_[A-Za-z0-9]{1,250}$")]


class AutoTopupRequest(Strict):
    """`rechargeTo` (recharge up to that available balance) or `amount` (a fixed top-up), not both.
    `stripePaymentMethodId` must be attached to the tenant's own Stripe customer (POST
    /settings/payment-methods); `stripeCustomerId` may be omitted, and if given must be that customer."""
    enabled: bool = True
    threshold: NonNegativeAmount
    rechargeTo: PositiveAmount | None = None
    amount: PositiveAmount | None = None
    stripeCustomerId: StripeCustomerId | None = None
    stripePaymentMethodId: StripePaymentMethodId
    maxPerMonth: PositiveAmount | None = None
    cooldownSeconds: Annotated[int, Field(ge=0, le=31 * 24 * 3600, strict=True)] = DEFAULT_COOLDOWN_SECONDS
    tenantId: TenantId | None = None


def _check(command: AutoTopupRequest) -> None:
    if (command.rechargeTo is None) == (command.amount is None):
        raise ValidationFailed("rechargeTo", "give either rechargeTo or amount, not both")
    if command.rechargeTo is not None and command.rechargeTo <= command.threshold:
        raise ValidationFailed("rechargeTo", "must be greater than threshold")
    if command.amount is not None and command.amount != command.amount.quantize(CENT):
        raise ValidationFailed("amount", "must be whole cents (Stripe charges cents)")
    if command.amount is not None and command.amount < Decimal("0.5"):
        raise ValidationFailed("amount", "must be at least 0.50 (Stripe's smallest USD charge)")
    if command.maxPerMonth is not None and command.amount is not None and command.maxPerMonth < command.amount:
        raise ValidationFailed("maxPerMonth", "must be at least amount, or no top-up could ever be made")


@dataclass(frozen=True)
class AutoTopupRule:
    tenant_id: str
    enabled: bool
    threshold: Decimal
    recharge_to: Decimal | None
    amount: Decimal | None
    stripe_customer_id: str
    stripe_payment_method_id: str
    max_per_month: Decimal | None
    cooldown_seconds: int
    disabled_reason: str | None
    disabled_at: datetime | None
    verified_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def status(self) -> str:
        return "active" if self.enabled else "disabled"


def rule_of(row) -> AutoTopupRule:  # noqa: ANN001
    values = dict(row._mapping)
    for name in ("threshold", "recharge_to", "amount", "max_per_month"):
        if values[name] is not None:
            values[name] = money.normalize(values[name])
    return AutoTopupRule(**values)


def get_rule(uow: UnitOfWork, tenant_id: str, *, lock: bool = False) -> AutoTopupRule | None:
    query = auto_topup_settings.select().where(auto_topup_settings.c.tenant_id == tenant_id)
    row = uow.connection.execute(query.with_for_update() if lock else query).one_or_none()
    return rule_of(row) if row is not None else None


def put_rule(uow: UnitOfWork, tenant_id: str, command: AutoTopupRequest,
             stripe_api: StripeCustomers) -> AutoTopupRule:
    """Replace the tenant's rule and commit, once Stripe confirms the payment method is attached to the
    tenant's own customer (ValidationFailed naming the field otherwise; customers.StripeUnavailable
    when Stripe cannot say). Saving it enabled closes the circuit breaker (the disabled reason is
    cleared): this is how an administrator turns it back on after a failure."""
    _check(command)
    owned = check_request(uow, stripe_api, tenant_id, command.stripeCustomerId, command.stripePaymentMethodId)
    if isinstance(owned, NotOwned):
        raise ValidationFailed(owned.field, owned.message)
    row = uow.connection.execute(text("""
        INSERT INTO auto_topup_settings AS s (tenant_id, enabled, threshold, recharge_to, amount, stripe_customer_id,
            stripe_payment_method_id, max_per_month, cooldown_seconds, disabled_reason, disabled_at, verified_at)
        VALUES (:t, :enabled, :threshold, :recharge_to, :amount, :customer, :payment_method, :max_per_month,
                :cooldown, CASE WHEN :enabled THEN NULL ELSE 'disabled by an administrator' END,
                CASE WHEN :enabled THEN NULL ELSE CAST(:now AS timestamptz) END, CAST(:now AS timestamptz))
        ON CONFLICT (tenant_id) DO UPDATE SET
            enabled = EXCLUDED.enabled, threshold = EXCLUDED.threshold, recharge_to = EXCLUDED.recharge_to,
            amount = EXCLUDED.amount, stripe_customer_id = EXCLUDED.stripe_customer_id,
            stripe_payment_method_id = EXCLUDED.stripe_payment_method_id, max_per_month = EXCLUDED.max_per_month,
            cooldown_seconds = EXCLUDED.cooldown_seconds,
            disabled_reason = CASE WHEN EXCLUDED.enabled THEN NULL
                                   WHEN s.enabled THEN 'disabled by an administrator' ELSE s.disabled_reason END,
            disabled_at = CASE WHEN EXCLUDED.enabled THEN NULL WHEN s.enabled THEN CAST(:now AS timestamptz)
                               ELSE s.disabled_at END,
            verified_at = CAST(:now AS timestamptz), updated_at = CAST(:now AS timestamptz)
        RETURNING *
    """), {"t": tenant_id, "enabled": command.enabled, "threshold": command.threshold,
           "recharge_to": command.rechargeTo, "amount": command.amount, "customer": owned,
           "payment_method": command.stripePaymentMethodId, "max_per_month": command.maxPerMonth,
           "cooldown": command.cooldownSeconds, "now": uow.now()}).one()  # no now() in DO UPDATE SET (Citus)
    uow.commit()
    return rule_of(row)


def disable(uow: UnitOfWork, tenant_id: str, reason: str) -> None:
    """The circuit breaker: no attempt until an administrator saves the rule enabled again (no commit)."""
    uow.connection.execute(text("""
        UPDATE auto_topup_settings SET enabled = false, disabled_reason = :reason, disabled_at = now(),
            updated_at = now()
        WHERE tenant_id = :t
    """), {"t": tenant_id, "reason": reason[:500]})


def spent_this_month(uow: UnitOfWork, tenant_id: str) -> Decimal:
    """What succeeded attempts paid in the current UTC month (the sum maxPerMonth caps)."""
    return money.normalize(uow.connection.execute(text("""
        SELECT coalesce(sum(amount), 0) FROM auto_topup_attempts
        WHERE tenant_id = :t AND status = 'succeeded' AND month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
    """), {"t": tenant_id}).scalar_one())
