"""Auto top-up attempts: when one starts, and the life of one.

An attempt starts when a tenant's available balance is at or below its rule's threshold (seen after
a settled charge group, and by the minute scan), unless: the rule is disabled (the circuit breaker
after a failed payment), the wallet is blocked or flagged, an attempt is already pending, the last
success is less than `cooldownSeconds` ago, or the amount would take the month's successes past
`maxPerMonth` — then a `capped` attempt is recorded and `auto_topup.capped` notified, once a month.

Life of an attempt (its row is the state machine; every step is conditional on `pending`):
    pending --succeed--> succeeded   (a paid grant, keyed by the payment intent)
    pending --fail-----> failed      (rule disabled with the reason, auto_topup.failed notified)
    pending --postpone-> pending     (Stripe unreachable: tried again later, same idempotency key)

Evaluations of one tenant run one after another (they lock the rule's row first; the scan skips a
locked one) and a partial unique index admits one pending attempt per tenant, so concurrent
evaluations, retries and redelivered messages start at most one attempt and finish it once.

Every try that would create a payment first checks with Stripe that the rule's card is still attached
to the tenant's own customer (payment.pay_attempt); a refusal fails the attempt like a declined card.
Rules saved before that check existed are checked by the minute scan too (verify_saved).
"""
from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from billing_core import money
from billing_core.db import UnitOfWork
from billing_core.notifications import outbox
from billing_core.payments import stripe_events
from billing_core.payments.auto_topup import customers
from billing_core.payments.auto_topup.rules import CENT, AutoTopupRule, disable, rule_of

PENDING, SUCCEEDED, FAILED, CAPPED = "pending", "succeeded", "failed", "capped"
FAILED_EVENT, CAPPED_EVENT = "auto_topup.failed", "auto_topup.capped"
MIN_CHARGE = Decimal("0.5")  # Stripe's smallest USD charge
SCAN_PAGE = 500
# a try in progress holds its attempt this long: the sweep does not send it again meanwhile
TRY_LEASE_SECONDS = 120
# a postponed try's message should arrive by its time; after this much more the sweep sends another
SWEEP_GRACE_SECONDS = 60


@dataclass(frozen=True)
class Evaluation:
    """What evaluating tenants started: attempts to pay and notifications to dispatch, after the commit."""
    attempts: list[tuple[str, uuid.UUID]] = field(default_factory=list)
    notification_ids: list[uuid.UUID] = field(default_factory=list)
    capped: int = 0

    def __add__(self, other: Evaluation) -> Evaluation:
        return Evaluation(self.attempts + other.attempts, self.notification_ids + other.notification_ids,
                          self.capped + other.capped)


def evaluate(uow: UnitOfWork, tenant_id: str) -> Evaluation:
    """Start the tenant's attempt if its balance calls for one (waiting for an evaluation in
    progress) and commit. The caller enqueues the attempts it returns."""
    row = uow.connection.execute(text(
        "SELECT * FROM auto_topup_settings WHERE tenant_id = :t AND enabled FOR UPDATE"), {"t": tenant_id}
    ).one_or_none()
    if row is None:
        uow.rollback()
        return Evaluation()
    found = _evaluate_locked(uow, rule_of(row))
    uow.commit()
    return found


def scan_page(uow: UnitOfWork, after: str, limit: int = SCAN_PAGE) -> tuple[Evaluation, str | None]:
    """The minute scan: evaluate the next `limit` enabled tenants (by id, after `after`) whose
    available balance is at or below their threshold, skipping those being evaluated; commit.

    Two steps, so that it runs on Citus: the candidates are read without a lock (an operator-wide scan),
    then each tenant's rule is claimed by a statement filtered on that tenant."""
    tenants = list(uow.connection.execute(text("""
        SELECT s.tenant_id FROM auto_topup_settings s /* citus:operator-scan auto-topup-candidates */
        LEFT JOIN wallets w ON w.tenant_id = s.tenant_id
        WHERE s.enabled AND s.tenant_id > :after
          AND coalesce(w.current_balance - w.reserved_balance, 0) <= s.threshold
        ORDER BY s.tenant_id LIMIT :limit
    """), {"after": after, "limit": limit}).scalars())
    if not tenants:
        uow.rollback()
        return Evaluation(), None
    found = Evaluation()
    for tenant_id in tenants:
        row = uow.connection.execute(text(
            "SELECT * FROM auto_topup_settings WHERE tenant_id = :t AND enabled FOR UPDATE SKIP LOCKED"),
            {"t": tenant_id}).one_or_none()
        if row is not None:
            found += _evaluate_locked(uow, rule_of(row))
    uow.commit()
    return found, tenants[-1]


def _evaluate_locked(uow: UnitOfWork, rule: AutoTopupRule) -> Evaluation:
    """Evaluate a tenant whose rule row this transaction holds locked (no commit)."""
    state = uow.connection.execute(text("""
        SELECT now() AS now, w.status, w.flagged_at,
               coalesce(w.current_balance - w.reserved_balance, 0) AS available,
               EXISTS (SELECT 1 FROM auto_topup_attempts a WHERE a.tenant_id = :t AND a.status = 'pending') AS pending,
               (SELECT max(finished_at) FROM auto_topup_attempts a
                WHERE a.tenant_id = :t AND a.status = 'succeeded') AS last_success,
               (SELECT coalesce(sum(amount), 0) FROM auto_topup_attempts a
                WHERE a.tenant_id = :t AND a.status = 'succeeded'
                  AND a.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date) AS spent,
               date_trunc('month', now() AT TIME ZONE 'UTC')::date AS month
        FROM auto_topup_settings s LEFT JOIN wallets w ON w.tenant_id = s.tenant_id
        WHERE s.tenant_id = :t
    """), {"t": rule.tenant_id}).one()
    available = money.normalize(state.available)
    if available > rule.threshold or state.pending:
        return Evaluation()
    if (state.status or "active") != "active" or state.flagged_at is not None:
        return Evaluation()  # a blocked or flagged wallet is for a person to look at first
    if state.last_success is not None and (state.now - state.last_success).total_seconds() < rule.cooldown_seconds:
        return Evaluation()
    amount = rule.amount if rule.amount is not None else money.round_up(
        money.subtract(rule.recharge_to, available), CENT)  # type: ignore[arg-type]
    amount = max(amount, MIN_CHARGE)
    values = {"t": rule.tenant_id, "id": uuid.uuid4(), "amount": amount, "available": available,
              "threshold": rule.threshold, "month": state.month}
    if rule.max_per_month is not None and money.add(state.spent, amount) > rule.max_per_month:
        capped = uow.connection.execute(text("""
            INSERT INTO auto_topup_attempts (tenant_id, id, status, amount, available_before, threshold, month,
                failure_code, failure_message, finished_at)
            VALUES (:t, :id, 'capped', :amount, :available, :threshold, :month, 'max_per_month',
                    :message, now())
            ON CONFLICT (tenant_id, month) WHERE status = 'capped' DO NOTHING
            RETURNING id
        """), {**values, "message": f"{money.format_decimal(amount)} would take this month's auto top-ups "
                                    f"past maxPerMonth {money.format_decimal(rule.max_per_month)}"}).first()
        if capped is None:
            return Evaluation()  # recorded and notified once this month already
        payload = {"attemptId": values["id"], "amount": amount, "maxPerMonth": rule.max_per_month,
                   "spentThisMonth": money.normalize(state.spent), "availableBalance": available,
                   "threshold": rule.threshold}
        return Evaluation(notification_ids=outbox.enqueue(uow, rule.tenant_id, CAPPED_EVENT, payload),
                          capped=1)
    started = uow.connection.execute(text("""
        INSERT INTO auto_topup_attempts (tenant_id, id, status, amount, available_before, threshold, month)
        VALUES (:t, :id, 'pending', :amount, :available, :threshold, :month)
        ON CONFLICT (tenant_id) WHERE status = 'pending' DO NOTHING
        RETURNING id
    """), values).first()
    return Evaluation(attempts=[(rule.tenant_id, started.id)]) if started else Evaluation()


def verify_saved(new_uow: Callable[[], UnitOfWork], stripe_api: customers.StripeCustomers,
                 limit: int = 100) -> list[uuid.UUID]:
    """The check of rules saved before LAD owned the tenants' Stripe customers (migration 0015 leaves them
    unverified; a migration cannot ask Stripe): each enabled unverified rule is checked now, whatever the
    balance, and is marked verified, or disabled with the reason and auto_topup.failed notified. Each
    rule commits on its own. Returns the notifications to dispatch; raises customers.StripeUnavailable
    (the rest wait for the next scan)."""
    with new_uow() as uow:
        rows = uow.connection.execute(text("""
            SELECT tenant_id, stripe_customer_id, stripe_payment_method_id FROM auto_topup_settings
            /* citus:operator-scan auto-topup-candidates */
            WHERE enabled AND verified_at IS NULL ORDER BY tenant_id LIMIT :limit
        """), {"limit": limit}).all()
    found: list[uuid.UUID] = []
    for row in rows:
        refusal = customers.verify_rule(new_uow, stripe_api, row.tenant_id, row.stripe_customer_id,
                                        row.stripe_payment_method_id)
        with new_uow() as uow:
            found += _verified(uow, row.tenant_id, row.stripe_customer_id, row.stripe_payment_method_id, refusal)
    return found


def _verified(uow: UnitOfWork, tenant_id: str, customer_id: str, payment_method_id: str,
              refusal: customers.NotOwned | None) -> list[uuid.UUID]:
    """Record a saved rule's check, unless the rule changed meanwhile (a new save is checked on its own); commit."""
    rule = uow.connection.execute(text("""
        SELECT * FROM auto_topup_settings WHERE tenant_id = :t AND enabled AND verified_at IS NULL
          AND stripe_customer_id = :c AND stripe_payment_method_id = :pm FOR UPDATE
    """), {"t": tenant_id, "c": customer_id, "pm": payment_method_id}).one_or_none()
    if rule is None:
        uow.rollback()
        return []
    if refusal is None:
        uow.connection.execute(text("UPDATE auto_topup_settings SET verified_at = now() WHERE tenant_id = :t"),
                               {"t": tenant_id})
        uow.commit()
        return []
    disable(uow, tenant_id, f"not this tenant's card ({refusal.code}): {refusal.message}")
    found = outbox.enqueue(uow, tenant_id, FAILED_EVENT, {
        "attemptId": None, "amount": None, "failureCode": refusal.code, "failureMessage": refusal.message,
        "paymentIntentId": None, "threshold": money.normalize(rule.threshold)})
    uow.commit()
    return found


# --- paying ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentTry:
    """One try at paying a pending attempt: what to ask Stripe for, and the how-manyth try this is."""
    tenant_id: str
    attempt_id: uuid.UUID
    amount: Decimal
    customer_id: str
    payment_method_id: str
    payment_intent_id: str | None  # known when an earlier try left the payment processing
    tries: int

    @property
    def amount_cents(self) -> int:
        return int(self.amount.scaleb(2))

    @property
    def idempotency_key(self) -> str:
        return str(self.attempt_id)


def start_try(uow: UnitOfWork, tenant_id: str, attempt_id: uuid.UUID) -> PaymentTry | None:
    """Claim a try of a pending attempt (None: finished already, a redelivered message) and commit."""
    row = uow.connection.execute(text("""
        UPDATE auto_topup_attempts a SET stripe_requests = stripe_requests + 1, updated_at = now(),
            next_try_at = now() + make_interval(secs => :lease)
        FROM auto_topup_settings s
        WHERE a.tenant_id = :t AND a.id = :id AND a.status = 'pending' AND s.tenant_id = a.tenant_id
        RETURNING a.amount, a.payment_intent_id, a.stripe_requests, s.stripe_customer_id, s.stripe_payment_method_id
    """), {"t": tenant_id, "id": attempt_id, "lease": TRY_LEASE_SECONDS}).one_or_none()
    uow.commit()
    if row is None:
        return None
    return PaymentTry(tenant_id, attempt_id, money.normalize(row.amount), row.stripe_customer_id,
                      row.stripe_payment_method_id, row.payment_intent_id, row.stripe_requests)


def _locked_pending(uow: UnitOfWork, tenant_id: str, attempt_id: uuid.UUID) -> Any:
    return uow.connection.execute(text(
        "SELECT * FROM auto_topup_attempts WHERE tenant_id = :t AND id = :id AND status = 'pending' FOR UPDATE"),
        {"t": tenant_id, "id": attempt_id}).one_or_none()


def succeed(uow: UnitOfWork, tenant_id: str, attempt_id: uuid.UUID, payment_intent_id: str,
            paid: Decimal) -> bool:
    """The payment succeeded: a paid grant of what was paid, through the Stripe webhook's own code
    (the payment intent keys it, so the webhook for this payment adds nothing), and commit.
    False when the attempt was finished already."""
    stripe_events.lock_payment(uow, payment_intent_id)  # first, as the webhook takes it: no deadlock
    if _locked_pending(uow, tenant_id, attempt_id) is None:
        uow.rollback()
        return False
    grant = stripe_events.credit_payment(uow, tenant_id, payment_intent_id, paid,
                                           reference=f"auto-topup:{attempt_id}")
    grant_id = grant.id if grant is not None else stripe_events.payment_grant(uow, payment_intent_id).id
    uow.connection.execute(text("""
        UPDATE auto_topup_attempts SET status = 'succeeded', amount = :paid, payment_intent_id = :pi,
            grant_id = :grant, failure_code = NULL, failure_message = NULL, finished_at = now(), updated_at = now()
        WHERE tenant_id = :t AND id = :id
    """), {"t": tenant_id, "id": attempt_id, "paid": paid, "pi": payment_intent_id, "grant": grant_id})
    uow.commit()
    return True


def fail(uow: UnitOfWork, tenant_id: str, attempt_id: uuid.UUID, code: str, message: str,
         payment_intent_id: str | None = None) -> list[uuid.UUID]:
    """The payment failed: the attempt fails with Stripe's code, the rule is disabled with the
    reason (the circuit breaker) and auto_topup.failed is notified; commit. Returns the
    notifications to dispatch (none when the attempt was finished already)."""
    attempt = _locked_pending(uow, tenant_id, attempt_id)
    if attempt is None:
        uow.rollback()
        return []
    uow.connection.execute(text("""
        UPDATE auto_topup_attempts SET status = 'failed', failure_code = :code, failure_message = :message,
            payment_intent_id = coalesce(:pi, payment_intent_id), finished_at = now(), updated_at = now()
        WHERE tenant_id = :t AND id = :id
    """), {"t": tenant_id, "id": attempt_id, "code": code[:100], "message": message[:500], "pi": payment_intent_id})
    disable(uow, tenant_id, f"payment failed ({code}): {message}")
    payload = {"attemptId": attempt_id, "amount": money.normalize(attempt.amount), "failureCode": code,
               "failureMessage": message[:500], "paymentIntentId": payment_intent_id or attempt.payment_intent_id,
               "availableBalance": money.normalize(attempt.available_before),
               "threshold": money.normalize(attempt.threshold)}
    found = outbox.enqueue(uow, tenant_id, FAILED_EVENT, payload)
    uow.commit()
    return found


def postpone(uow: UnitOfWork, tenant_id: str, attempt_id: uuid.UUID, error: str, delay_seconds: int,
             payment_intent_id: str | None = None) -> None:
    """Stripe could not be reached (or the payment is still processing): the attempt stays pending
    and is tried again after the delay, with the same idempotency key; commit."""
    uow.connection.execute(text("""
        UPDATE auto_topup_attempts SET failure_message = :error, updated_at = now(),
            payment_intent_id = coalesce(:pi, payment_intent_id),
            next_try_at = now() + make_interval(secs => :delay)
        WHERE tenant_id = :t AND id = :id AND status = 'pending'
    """), {"t": tenant_id, "id": attempt_id, "error": error[:500], "pi": payment_intent_id,
           "delay": delay_seconds + SWEEP_GRACE_SECONDS})
    uow.commit()


def claim_lost(uow: UnitOfWork, limit: int = 100) -> list[tuple[str, uuid.UUID]]:
    """Pending attempts whose message was lost (the broker was down, a worker died): past their next
    try and not held by a try. Marked as sent and returned for a new message; commit.

    Two steps, so that it runs on Citus: the tenants with such attempts are found without a lock, then each
    tenant's attempts are claimed (FOR UPDATE SKIP LOCKED) by a statement filtered on that tenant."""
    tenants = list(uow.connection.execute(text("""
        SELECT tenant_id FROM auto_topup_attempts /* citus:operator-scan auto-topup-candidates */
        WHERE status = 'pending' AND next_try_at < now()
        GROUP BY tenant_id ORDER BY min(next_try_at) LIMIT :limit
    """), {"limit": limit}).scalars())
    claimed: list[tuple[str, uuid.UUID]] = []
    for tenant_id in tenants:
        if len(claimed) >= limit:
            break
        rows = uow.connection.execute(text("""
            UPDATE auto_topup_attempts a SET next_try_at = now() + make_interval(secs => :lease)
            FROM (SELECT tenant_id, id FROM auto_topup_attempts
                  WHERE tenant_id = :t AND status = 'pending' AND next_try_at < now()
                  ORDER BY next_try_at LIMIT :limit FOR UPDATE SKIP LOCKED) due
            WHERE a.tenant_id = :t AND a.tenant_id = due.tenant_id AND a.id = due.id
            RETURNING a.tenant_id, a.id
        """), {"t": tenant_id, "limit": limit - len(claimed), "lease": TRY_LEASE_SECONDS}).all()
        claimed += [(r.tenant_id, r.id) for r in rows]
    uow.commit()
    return claimed


# --- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    id: uuid.UUID
    tenant_id: str
    status: str
    amount: Decimal
    available_before: Decimal
    threshold: Decimal
    payment_intent_id: str | None
    failure_code: str | None
    failure_message: str | None
    stripe_requests: int
    grant_id: uuid.UUID | None
    created_at: datetime
    finished_at: datetime | None


def list_attempts(uow: UnitOfWork, tenant_id: str, *, status: str | None = None, limit: int = 100) -> list[Attempt]:
    """One tenant's attempts, newest first."""
    return _attempts(uow, tenant_id, status, limit)


def list_every_tenants_attempts(uow: UnitOfWork, *, status: str | None = None, limit: int = 100) -> list[Attempt]:
    """Every tenant's attempts, newest first: the operators' explicit cross-tenant list."""
    return _attempts(uow, None, status, limit)


def _attempts(uow: UnitOfWork, tenant_id: str | None, status: str | None, limit: int) -> list[Attempt]:
    # one tenant's, or every tenant's for the operator (an operator-wide scan without locks)
    scope = "tenant_id = :t" if tenant_id is not None else "true /* citus:operator-scan operator-reports */"
    rows = uow.connection.execute(text(f"""
        SELECT * FROM auto_topup_attempts
        WHERE {scope} AND (CAST(:status AS text) IS NULL OR status = :status)
        ORDER BY created_at DESC, id DESC LIMIT :limit
    """), {"t": tenant_id, "status": status, "limit": limit}).all()
    return [Attempt(id=r.id, tenant_id=r.tenant_id, status=r.status, amount=money.normalize(r.amount),
                    available_before=money.normalize(r.available_before), threshold=money.normalize(r.threshold),
                    payment_intent_id=r.payment_intent_id, failure_code=r.failure_code,
                    failure_message=r.failure_message, stripe_requests=r.stripe_requests, grant_id=r.grant_id,
                    created_at=r.created_at, finished_at=r.finished_at) for r in rows]
