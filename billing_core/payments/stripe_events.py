"""Stripe payments as credits. The webhook stores each verified event once (Stripe's event id is the
key, so a redelivery adds nothing) and a worker processes it:

- `checkout.session.completed` (paid) and `payment_intent.succeeded` with `metadata.tenantId` create a
  paid grant for the payment; both arrive for one checkout, so the payment intent keys the grant and
  the second adds nothing.
- `charge.refunded` and `charge.dispute.created` claw back what was refunded or disputed of that
  payment: a negative adjustment drawn first from the payment's own grant, even below zero, in which
  case the wallet is flagged. A clawback that arrives before its payment waits for it.

Amounts are Stripe's minor units: USD cents, so 1 credit = 1 USD.
"""
from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from billing_core import money
from billing_core.catalog import CURRENCY
from billing_core.db import UnitOfWork
from billing_core.documents import receipts
from billing_core.ledger.book import WalletBook
from billing_core.ledger.model import EntryType, GrantKind
from billing_core.ledger.tables import credit_grants, ledger_entries
from billing_core.payments.tables import stripe_events

CREDITS = ("checkout.session.completed", "payment_intent.succeeded")
CLAWBACKS = ("charge.refunded", "charge.dispute.created")


def record_event(uow: UnitOfWork, event: dict[str, Any]) -> bool:
    """Store a verified event; False when this event id was stored before. Commits."""
    inserted = uow.connection.execute(
        insert(stripe_events).values(id=event["id"], event_type=event.get("type", ""), payload=event,
                                     status="received", received_at=func.now())
        .on_conflict_do_nothing(index_elements=[stripe_events.c.id]).returning(stripe_events.c.id)
    ).first()
    uow.commit()
    return inserted is not None


def process_event(uow: UnitOfWork, event_id: str) -> str:
    """Apply a stored event once and commit; returns its status. Safe to run twice or concurrently:
    the event row is locked and only an unprocessed event is acted on."""
    stored = uow.connection.execute(select(stripe_events).where(stripe_events.c.id == event_id)).one_or_none()
    if stored is None:
        uow.rollback()
        return "unknown"
    payment = _payment_of(stored.event_type, _object(stored.payload))
    if payment:
        # a payment's credit and its clawbacks are applied one at a time (taken before any row lock,
        # so no two events wait on each other), so a clawback processed alongside its payment either
        # sees the grant or is seen waiting by it
        lock_payment(uow, payment)
    row = uow.connection.execute(
        select(stripe_events).where(stripe_events.c.id == event_id).with_for_update()).one()
    if row.status in ("processed", "ignored", "failed"):
        uow.rollback()
        return row.status
    status, tenant_id, detail = _apply(uow, row.event_type, row.payload)
    _mark(uow, event_id, status, tenant_id, detail)
    if status == "processed" and row.event_type in CREDITS:
        # clawbacks that arrived before this payment can be applied now
        for waiting in _waiting_for(uow, payment):
            _mark(uow, waiting.id, *_apply(uow, waiting.event_type, waiting.payload))
    uow.commit()
    return status


def _mark(uow: UnitOfWork, event_id: str, status: str, tenant_id: str | None, detail: str | None) -> None:
    uow.connection.execute(update(stripe_events).where(stripe_events.c.id == event_id).values(
        status=status, tenant_id=tenant_id, detail=detail,
        processed_at=func.now() if status in ("processed", "ignored", "failed") else None))


def _object(payload: Any) -> dict[str, Any]:
    """The event's data.object; {} for anything not shaped like one (it is then ignored, not retried)."""
    data = payload.get("data") if isinstance(payload, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}


def _tenant_of(obj: dict[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    tenant_id = metadata.get("tenantId") if isinstance(metadata, dict) else None
    return tenant_id if isinstance(tenant_id, str) and tenant_id else None


def _payment_of(event_type: str, obj: dict[str, Any]) -> str | None:
    """The payment intent an event is about: the key of the grant it creates or claws back."""
    if event_type == "payment_intent.succeeded":
        payment = obj.get("id")
    else:
        payment = obj.get("payment_intent") or (obj.get("id") if event_type == "checkout.session.completed" else None)
    return payment if isinstance(payment, str) and payment else None


def _waiting_for(uow: UnitOfWork, payment: str | None) -> Sequence[Any]:
    if payment is None:
        return []
    return uow.connection.execute(text(
        "SELECT id, event_type, payload FROM stripe_events WHERE status = 'waiting' "
        "AND payload->'data'->'object'->>'payment_intent' = :payment ORDER BY received_at FOR UPDATE"
    ), {"payment": payment}).all()


def _apply(uow: UnitOfWork, event_type: str, payload: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(status, tenant, detail) of applying one event."""
    obj = _object(payload)
    payment = _payment_of(event_type, obj)
    if event_type not in CREDITS + CLAWBACKS:
        return "ignored", None, f"{event_type} is not an event LAD Billing acts on"
    if not payment:
        return "ignored", None, "the event names no payment intent"
    currency = obj.get("currency") or CURRENCY
    if not isinstance(currency, str) or currency.upper() != CURRENCY:
        return "ignored", None, f"payments in {currency} are not credited; the wallet currency is {CURRENCY}"
    if event_type in CREDITS:
        return _credit(uow, event_type, payload["id"], obj, payment)
    return _claw_back(uow, event_type, payload["id"], obj, payment)


def _minor(value: Any) -> Decimal | None:
    """Whole cents as credits, exactly (scaleb shifts the exponent; nothing divides)."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    cents = Decimal(value)
    if not cents.is_finite() or cents < 0 or cents != cents.to_integral_value():
        return None
    return money.normalize(cents.scaleb(-2))


def _credit(uow: UnitOfWork, event_type: str, event_id: str, obj: dict[str, Any],
            payment: str) -> tuple[str, str | None, str | None]:
    tenant_id = _tenant_of(obj)
    if tenant_id is None:
        return "ignored", None, "no metadata.tenantId"
    if event_type == "checkout.session.completed" and obj.get("payment_status") != "paid":
        return "ignored", tenant_id, f"payment_status is {obj.get('payment_status')!r}"
    amount = _minor(obj.get("amount_total") if event_type == "checkout.session.completed"
                    else obj.get("amount_received"))
    if not amount:
        return "ignored", tenant_id, "no amount paid"
    if credit_payment(uow, tenant_id, payment, amount, reference=event_id) is None:
        return "ignored", tenant_id, f"payment {payment} was credited already"
    return "processed", tenant_id, None


def lock_payment(uow: UnitOfWork, payment: str) -> None:
    """Serialize everything done about one payment intent (its credit, clawbacks, an auto top-up's
    finish) until the transaction ends. Reentrant within a transaction."""
    uow.connection.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                           {"key": f"stripe-payment:{payment}"})


def credit_payment(uow: UnitOfWork, tenant_id: str, payment: str, amount: Decimal, *, reference: str) -> Any:
    """A paid grant for a Stripe payment intent, once: the payment intent keys the grant, so the
    webhook and an auto top-up that both learn of one payment add it once. Returns the new grant,
    or None when the payment was credited already (to any tenant). No commit."""
    lock_payment(uow, payment)
    if _payment_grant(uow, payment) is not None:
        return None
    book = WalletBook.open(uow, tenant_id)
    _, grant = book.add_grant(amount, kind=GrantKind.PAID, source="stripe", grant_reference=f"stripe:{payment}",
                              reference=reference, description=f"Stripe payment {payment}",
                              idempotency_key=f"stripe:{reference}", created_by="stripe")
    book.flush()
    receipts.issue_for_grant(uow, grant, description=f"Credit purchase, Stripe payment {payment}")
    return grant


def payment_grant(uow: UnitOfWork, payment: str) -> Any:
    """The grant (id, tenant_id, amount) a payment intent created, or None."""
    return _payment_grant(uow, payment)


def _payment_grant(uow: UnitOfWork, payment: str) -> Any:
    """The grant a payment created, in whichever tenant (the payment's advisory lock is held)."""
    return uow.connection.execute(
        select(credit_grants.c.id, credit_grants.c.tenant_id, credit_grants.c.amount)
        .prefix_with("/* citus:operator-scan stripe-payment */")  # every tenant's grants, no lock
        .where(credit_grants.c.source == "stripe", credit_grants.c.reference == f"stripe:{payment}")).first()


def _claw_back(uow: UnitOfWork, event_type: str, event_id: str, obj: dict[str, Any],
               payment: str) -> tuple[str, str | None, str | None]:
    grant_row = _payment_grant(uow, payment)
    if grant_row is None:
        return "waiting", None, f"waiting for payment {payment} to be credited"
    tenant_id = grant_row.tenant_id
    named = _tenant_of(obj)
    if named is not None and named != tenant_id:  # inconsistent metadata: touch neither wallet
        return "ignored", named, f"names tenant {named}, but payment {payment} was credited to another tenant"
    book = WalletBook.open(uow, tenant_id)
    credit_entry = uow.connection.execute(
        select(ledger_entries.c.id).where(ledger_entries.c.tenant_id == tenant_id,
                                          ledger_entries.c.grant_id == grant_row.id,
                                          ledger_entries.c.entry_type == EntryType.TOPUP)).scalar_one()
    clawed = -money.total(uow.connection.execute(
        select(ledger_entries.c.amount).where(ledger_entries.c.tenant_id == tenant_id,
                                              ledger_entries.c.related_entry_id == credit_entry,
                                              ledger_entries.c.entry_type == EntryType.ADJUSTMENT)).scalars())
    # charge.refunded carries the refunded total so far; a dispute, the disputed amount
    if event_type == "charge.refunded":
        target = _minor(obj.get("amount_refunded")) or Decimal(0)
    else:
        target = money.add(clawed, _minor(obj.get("amount")) or Decimal(0))
    amount = money.subtract(min(target, grant_row.amount), clawed)
    if amount <= 0:
        return "ignored", tenant_id, "nothing more to claw back for this payment"
    book.load_grants([grant_row.id])
    book.debit(amount, entry_type=EntryType.ADJUSTMENT, first=book.grants[grant_row.id], related_entry_id=credit_entry,
               reference=event_id, description=f"Stripe {event_type} of payment {payment}",
               idempotency_key=f"stripe:{event_id}", created_by="stripe")
    # a chargeback that leaves a debt, or eats into held credits, is for a person to review (and the
    # wallet's spendable check admits a flagged wallet below what its overdraft allows)
    if book.balance < 0 or book.spendable < 0:
        book.flag(f"Stripe {event_type} of payment {payment} took the balance below zero")
    book.flush()
    return "processed", tenant_id, None


def mark_failed(uow: UnitOfWork, event_id: str, detail: str) -> None:
    """An event that cannot be applied (a bug, not an outage): kept for a person, not retried."""
    _mark(uow, event_id, "failed", None, detail[:2000])
    uow.commit()


def unprocessed(uow: UnitOfWork, limit: int = 100) -> list[str]:
    """Events stored but not processed (their task was lost): the sweep enqueues them again."""
    return list(uow.connection.execute(
        select(stripe_events.c.id).where(stripe_events.c.status == "received",
                                         stripe_events.c.received_at < func.now() - text("interval '1 minute'"))
        .order_by(stripe_events.c.received_at).limit(limit)).scalars())
