"""Reservations (holds): credits set aside before work whose cost is not known yet (a voice call),
then settled by a charge naming the hold, released, or expired after their TTL.

A hold lowers the available balance at once; it moves no money, so its ledger entries carry the
change of the reserved balance (`reserved_change`) and an amount of zero. Every change happens under
the wallet's row lock (WalletBook), which is what makes a hold settle at most once.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import select

from billing_core import idempotency, money
from billing_core.agencies import holds as agency_holds
from billing_core.calls.admission import Concurrency, admit
from billing_core.catalog import clock_and_catalog, price_items
from billing_core.cursors import newest_first, next_cursor
from billing_core.db import UnitOfWork
from billing_core.errors import (
    InsufficientBalance,
    NotFound,
    ReservationClosed,
    ReservationExpired,
    ValidationFailed,
    WalletBlocked,
)
from billing_core.ledger import expiry
from billing_core.ledger.book import WalletBook
from billing_core.ledger.model import Hold, HoldStatus
from billing_core.lifecycle.commands import ExtendReservationRequest, ReleaseReservationRequest, ReservationRequest
from billing_core.lifecycle.quotes import binding_prices, load_quotes
from billing_core.lifecycle.tables import reservations
from billing_core.usage.commands import fingerprint_body


@dataclass(frozen=True)
class HoldResult:
    hold: Hold
    replayed: bool = False
    concurrency: Concurrency | None = None  # counted under the lock when the hold was admitted


def load_holds(uow: UnitOfWork, tenant_id: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, Hold]:
    if not ids:
        return {}
    rows = uow.connection.execute(
        select(reservations).where(reservations.c.tenant_id == tenant_id, reservations.c.id.in_(set(ids))))
    return {r.id: Hold(**r._mapping) for r in rows}


def get_hold(uow: UnitOfWork, tenant_id: str, reservation_id: uuid.UUID) -> Hold:
    found = load_holds(uow, tenant_id, [reservation_id]).get(reservation_id)
    if found is None:
        raise NotFound(f"reservation {reservation_id} not found")
    return found


def _replay(uow: UnitOfWork, tenant_id: str, record: idempotency.IdempotencyRecord) -> HoldResult:
    assert record.resource_id is not None
    return HoldResult(get_hold(uow, tenant_id, record.resource_id), replayed=True)


def _refuse_blocked(book: WalletBook) -> None:
    if book.blocked:
        raise WalletBlocked("the wallet is blocked; reservations are refused", {"walletId": str(book.wallet.id)})


def _may_hold(book: WalletBook, feature_key: str, amount: Decimal) -> None:
    _refuse_blocked(book)
    book.budgets.check(feature_key, book.now, amount)
    if amount > book.spendable:
        raise InsufficientBalance("insufficient balance for this reservation",
                                  {"required": money.format_decimal(amount),
                                   "available": money.format_decimal(book.available)})


def reserve(uow: UnitOfWork, tenant_id: str, command: ReservationRequest, *, created_by: str | None) -> HoldResult:
    """Hold `amount` (or what the items cost) for `ttlSeconds`, or refuse: 402 when it does not fit or
    the wallet is in debt, 429 concurrency_limit when every call slot is taken. The slot is counted
    under the wallet's lock, after what was due has ended, in the transaction that opens the hold."""
    if (command.amount is None) == (command.items is None):
        raise ValidationFailed("amount", "give either amount or items")
    if command.quoteId is not None and command.items is None:
        raise ValidationFailed("quoteId", "a quote prices items; give items with it")
    key = command.idempotencyKey
    earlier = idempotency.claim(uow, tenant_id, key, "reservation",
                                idempotency.fingerprint("reservation", fingerprint_body(command)))
    if earlier is not None:
        return _replay(uow, tenant_id, earlier)
    amount = command.amount
    if command.items is not None:
        now, catalog = clock_and_catalog(uow, tenant_id)
        prices = catalog if command.quoteId is None else binding_prices(
            load_quotes(uow, tenant_id, [command.quoteId]), command.quoteId, now, catalog)
        amount = money.total(p.cost for p in price_items(uow, tenant_id, command.items, now, prices))
    assert amount is not None
    book = WalletBook.open(uow, tenant_id)
    if expiry.end_due(book):
        book.flush()  # the slots those holds took are free for the count below
    _refuse_blocked(book)
    admission = admit(book, command.featureKey)
    # an agency-funded sub-account holds nothing of its own: its agency's wallet backs the hold
    sub_account = agency_holds.funded_by_agency(uow, tenant_id)
    if sub_account is None:
        _may_hold(book, command.featureKey, amount)
    else:
        book.budgets.check(command.featureKey, book.now, amount)
    hold = Hold(
        id=uuid.uuid4(), tenant_id=tenant_id, wallet_id=book.wallet.id, feature_key=command.featureKey,
        external_reference_id=command.externalReferenceId, quote_id=command.quoteId, status=HoldStatus.ACTIVE,
        amount=amount, settled_amount=None, usage_event_id=None,
        expires_at=book.now + timedelta(seconds=command.ttlSeconds), created_at=book.now, updated_at=book.now,
        closed_at=None, burst_multiplier=admission.burst_multiplier,
        agency_id=sub_account.agency_id if sub_account is not None else None)
    book.hold(hold, reference=command.externalReferenceId, description=f"hold for {command.featureKey}",
              idempotency_key=key, created_by=created_by)
    if sub_account is not None:
        agency_holds.back_hold(uow, sub_account, book, hold, command.items, created_by=created_by)
    book.flush()
    idempotency.record_result(uow, tenant_id, key, resource_id=hold.id)
    uow.commit()
    return HoldResult(hold, concurrency=admission.concurrency)


def _open_hold(uow: UnitOfWork, tenant_id: str, reservation_id: uuid.UUID) -> tuple[WalletBook, Hold]:
    book = WalletBook.open(uow, tenant_id)
    book.load_holds([reservation_id])
    hold = book.holds.get(reservation_id)
    if hold is None:
        raise NotFound(f"reservation {reservation_id} not found")
    return book, hold


def _refuse_closed(hold: Hold, book: WalletBook) -> None:
    if hold.status == HoldStatus.EXPIRED or (hold.status == HoldStatus.ACTIVE and hold.expires_at <= book.now):
        raise ReservationExpired("the reservation expired", {"reservationId": str(hold.id),
                                                             "expiresAt": hold.expires_at.isoformat()})
    if hold.status != HoldStatus.ACTIVE:
        raise ReservationClosed(f"the reservation was {hold.status} already",
                                {"reservationId": str(hold.id), "status": hold.status})


def extend(uow: UnitOfWork, tenant_id: str, reservation_id: uuid.UUID, command: ExtendReservationRequest, *,
           created_by: str | None) -> HoldResult:
    """Hold more and/or longer: a call that runs long. The expiry is never brought forward."""
    if command.amount is None and command.ttlSeconds is None:
        raise ValidationFailed("amount", "give amount and/or ttlSeconds")
    key = command.idempotencyKey
    earlier = idempotency.claim(uow, tenant_id, key, f"extend:{reservation_id}",
                                idempotency.fingerprint("extend", fingerprint_body(command)))
    if earlier is not None:
        return _replay(uow, tenant_id, earlier)
    book, hold = _open_hold(uow, tenant_id, reservation_id)
    _refuse_closed(hold, book)
    expiry.end_due(book)  # credits past their expiry are not available to hold more
    more = command.amount or Decimal(0)
    sub_account = agency_holds.funded_by_agency(uow, tenant_id)
    if more and sub_account is None:
        _may_hold(book, hold.feature_key, more)
    elif more and sub_account is not None:
        book.budgets.check(hold.feature_key, book.now, more)
        agency_holds.check_cap(uow, sub_account, book.now, money.add(agency_holds.held(uow, tenant_id), more))
    expires_at = hold.expires_at
    if command.ttlSeconds is not None:
        expires_at = max(expires_at, book.now + timedelta(seconds=command.ttlSeconds))
    book.extend_hold(hold, more, expires_at, description=f"hold for {hold.feature_key} extended",
                     idempotency_key=key, created_by=created_by)
    # an agency's hold backing this one follows it (sub-account's lock first, then the agency's)
    agency_holds.extend_backing(uow, tenant_id, hold, more, created_by=created_by)
    book.flush()
    idempotency.record_result(uow, tenant_id, key, resource_id=hold.id)
    uow.commit()
    return HoldResult(hold)


def release(uow: UnitOfWork, tenant_id: str, reservation_id: uuid.UUID, command: ReleaseReservationRequest, *,
            created_by: str | None) -> HoldResult:
    """Give the hold back to the available balance. Releasing a released hold again changes nothing
    and answers it as a replay; a settled or expired one cannot be released."""
    key = command.idempotencyKey
    if key is not None:
        earlier = idempotency.claim(uow, tenant_id, key, f"release:{reservation_id}",
                                    idempotency.fingerprint("release", fingerprint_body(command)))
        if earlier is not None:
            return _replay(uow, tenant_id, earlier)
    book, hold = _open_hold(uow, tenant_id, reservation_id)
    if hold.status == HoldStatus.RELEASED:
        uow.rollback()
        return HoldResult(hold, replayed=True)
    _refuse_closed(hold, book)
    book.close_hold(hold, HoldStatus.RELEASED, idempotency_key=key, created_by=created_by)
    agency_holds.release_backing(uow, tenant_id, hold, created_by=created_by)
    book.flush()
    if key is not None:
        idempotency.record_result(uow, tenant_id, key, resource_id=hold.id)
    uow.commit()
    return HoldResult(hold)


def list_holds(uow: UnitOfWork, tenant_id: str, *, status: str | None, limit: int,
               cursor: str | None) -> tuple[list[Hold], str | None]:
    """Newest first; the cursor is the last reservation's (created_at, id)."""
    query = select(reservations).where(reservations.c.tenant_id == tenant_id)
    if status is not None:
        query = query.where(reservations.c.status == status)
    rows = uow.connection.execute(newest_first(query, reservations, cursor, limit)).all()
    return [Hold(**r._mapping) for r in rows[:limit]], next_cursor(rows, limit)
