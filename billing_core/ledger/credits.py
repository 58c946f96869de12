"""Credits in and out by administrators: top-ups (credit grants), refunds of debits, adjustments."""
from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Boolean, column, select, text

from billing_core import idempotency, money
from billing_core.db import UnitOfWork, cached_text
from billing_core.errors import InsufficientBalance, NotFound, RefundExceeded, ValidationFailed
from billing_core.ledger.book import DEBT, Grant, WalletBook
from billing_core.ledger.commands import AdjustmentRequest, RefundRequest, TopUpRequest
from billing_core.ledger.tables import credit_grants, grant_draws, ledger_entries, wallets
from billing_core.ledger.wallets import LedgerEntry, Wallet, get_entry, get_wallet
from billing_core.usage.commands import fingerprint_body
from billing_core.usage.tables import usage_events

# the order debits draw on grants (WalletBook.live_grants), as SQL; the debt comes last
DRAW_ORDER = (credit_grants.c.kind == DEBT, credit_grants.c.priority, credit_grants.c.expires_at.asc().nulls_last(),
              credit_grants.c.kind != "promotional", credit_grants.c.created_at, credit_grants.c.id)


@dataclass(frozen=True)
class CreditResult:
    entry: LedgerEntry
    replayed: bool
    grant: Grant | None = None


def _claimed(uow: UnitOfWork, tenant_id: str, key: str, operation: str, command) -> CreditResult | None:  # noqa: ANN001
    """None for a new request; the earlier result for a replay (IdempotencyConflict for another request)."""
    earlier = idempotency.claim(uow, tenant_id, key, operation,
                                idempotency.fingerprint(operation, fingerprint_body(command)))
    if earlier is None:
        return None
    assert earlier.ledger_entry_id is not None
    entry = get_entry(uow, tenant_id, earlier.ledger_entry_id)
    assert entry is not None
    return CreditResult(entry, replayed=True, grant=get_grant(uow, tenant_id, entry.grant_id))


def _future(book: WalletBook, command: TopUpRequest | AdjustmentRequest) -> None:
    if command.expiresAt is not None and command.expiresAt <= book.now:
        raise ValidationFailed("expiresAt", "must be in the future")


def _commit(uow: UnitOfWork, book: WalletBook, key: str) -> CreditResult:
    """Write the book, remember the entry for replays, commit; answered as a replay would be."""
    entry_id = book.flush()[-1]
    idempotency.record_result(uow, book.tenant_id, key, ledger_entry_id=entry_id)
    entry = book.entries([entry_id])[0]
    grant = get_grant(uow, book.tenant_id, entry.grant_id)
    uow.commit()
    return CreditResult(entry, replayed=False, grant=grant)


def top_up(uow: UnitOfWork, tenant_id: str, command: TopUpRequest, *, created_by: str | None) -> CreditResult:
    """Credit the wallet with a new grant and commit; a repeated key replays the first entry.
    Top-ups work on a blocked wallet too."""
    key = command.idempotencyKey
    replay = _claimed(uow, tenant_id, key, "topup", command)
    if replay is not None:
        return replay
    book = WalletBook.open(uow, tenant_id)
    _future(book, command)
    book.add_grant(command.amount, kind=command.kind, source="topup", priority=command.priority,
                              expires_at=command.expiresAt, reference=key, description=command.description,
                              idempotency_key=key, created_by=created_by)
    return _commit(uow, book, key)


def adjust(uow: UnitOfWork, tenant_id: str, command: AdjustmentRequest, *, created_by: str | None) -> CreditResult:
    """A manual correction with a reason: positive adds a grant, negative debits the grants like a
    charge would and must fit in the available balance plus overdraft."""
    key = command.idempotencyKey
    replay = _claimed(uow, tenant_id, key, "adjustment", command)
    if replay is not None:
        return replay
    book = WalletBook.open(uow, tenant_id)
    book.expire_due()
    entry = {"reference": key, "description": command.reason, "idempotency_key": key, "created_by": created_by}
    if command.amount > 0:
        _future(book, command)
        book.add_grant(command.amount, kind=command.kind, source="adjustment", entry_type="adjustment",
                                  expires_at=command.expiresAt, **entry)
        return _commit(uow, book, key)
    if command.expiresAt is not None:
        raise ValidationFailed("expiresAt", "only a positive adjustment creates a grant that can expire")
    if -command.amount > book.spendable:
        raise InsufficientBalance("the adjustment would take the balance below what the overdraft allows",
                                  {"field": "amount", "required": money.format_decimal(-command.amount),
                                   "available": money.format_decimal(book.available)})
    book.debit(-command.amount, entry_type="adjustment", **entry)
    return _commit(uow, book, key)


def refund(uow: UnitOfWork, tenant_id: str, command: RefundRequest, *, created_by: str | None) -> CreditResult:
    """Credit back all or part of a debit, into the grants it drew from. The refunds of one debit
    never add up to more than it took; they are linked to it by related_entry_id."""
    key = command.idempotencyKey
    replay = _claimed(uow, tenant_id, key, "refund", command)
    if replay is not None:
        return replay
    book = WalletBook.open(uow, tenant_id)  # refunds of one debit wait for each other here
    original = get_entry(uow, tenant_id, command.transactionId)
    if original is None:
        raise NotFound(f"transaction {command.transactionId} not found", {"field": "transactionId"})
    if original.entry_type != "debit":
        raise ValidationFailed("transactionId", f"only a debit can be refunded, not a {original.entry_type}")
    returnable = _returnable(uow, tenant_id, original)
    left = money.total(amount for _, amount in returnable)
    amount = command.amount if command.amount is not None else left
    if amount == 0 or amount > left:
        raise RefundExceeded("a refund cannot exceed what is left of the debit",
                             {"field": "amount", "debited": money.format_decimal(-original.amount),
                              "refundable": money.format_decimal(left)})
    book.restore(amount, returnable, related_entry_id=original.id,
                 usage_event_id=original.usage_event_id, reference=str(original.id), description=command.reason,
                 idempotency_key=key, created_by=created_by)
    if original.usage_event_id is not None:
        event = uow.connection.execute(
            select(usage_events.c.feature_key, usage_events.c.created_at)
            .where(usage_events.c.tenant_id == tenant_id, usage_events.c.id == original.usage_event_id)).one()
        book.budgets.spend(event.feature_key, event.created_at, -amount)
    return _commit(uow, book, key)


def _returnable(uow: UnitOfWork, tenant_id: str, original: LedgerEntry) -> list[tuple[uuid.UUID | None, Decimal]]:
    """Per grant the debit drew from (in draw order), what earlier refunds have not yet returned.
    A debit that drew on the debt can be refunded too; that part repays the debt or becomes a grant.
    A debit from before grants existed has no draws: all of it may come back, as a new grant."""
    drawn: dict[uuid.UUID | None, Decimal] = {}
    for grant_id, amount in uow.connection.execute(
        select(grant_draws.c.grant_id, grant_draws.c.amount)
        .join(credit_grants, credit_grants.c.id == grant_draws.c.grant_id)
        .where(grant_draws.c.tenant_id == tenant_id, grant_draws.c.ledger_entry_id == original.id)
        .order_by(*DRAW_ORDER)
    ):
        drawn[grant_id] = -amount
    if not drawn:
        drawn[None] = -original.amount
    refunded = uow.connection.execute(
        select(ledger_entries.c.amount).where(ledger_entries.c.tenant_id == tenant_id,
                                              ledger_entries.c.related_entry_id == original.id,
                                              ledger_entries.c.entry_type == "refund")).scalars().all()
    # what was refunded before is taken off the draws last drawn first, as restore() returns them
    already = money.total(refunded)
    left: dict[uuid.UUID | None, Decimal] = defaultdict(Decimal)
    for grant_id in reversed(list(drawn)):
        taken = min(already, drawn[grant_id])
        already = money.subtract(already, taken)
        left[grant_id] = money.subtract(drawn[grant_id], taken)
    return [(g, left[g]) for g in drawn if left[g] > 0]


def get_grant(uow: UnitOfWork, tenant_id: str, grant_id: uuid.UUID | None) -> Grant | None:
    if grant_id is None:
        return None
    row = uow.connection.execute(
        select(credit_grants).where(credit_grants.c.tenant_id == tenant_id, credit_grants.c.id == grant_id)
    ).one_or_none()
    return Grant(**row._mapping) if row else None


def live_grants(uow: UnitOfWork, tenant_id: str) -> list[Grant]:
    """The wallet's grants with something left (and the debt, if any), in the order debits draw on them."""
    rows = uow.connection.execute(
        select(credit_grants).where(credit_grants.c.tenant_id == tenant_id, credit_grants.c.remaining != 0)
        .order_by(*DRAW_ORDER))
    return [Grant(**r._mapping) for r in rows]


def wallet_view(uow: UnitOfWork, tenant_id: str) -> tuple[Wallet, list[Grant]]:
    """The wallet (created on first use) and its live grants, read without the wallet's row lock —
    unless a hold or credits are past their expiry: then they end first, as the beat job would end
    them, so the balance shown is the one a charge would meet. Commits."""
    # one statement for the wallet and whether anything is due (the wallet is created only when
    # missing), the grants in the same transaction: 3 round trips instead of 7 (bench/PROFILE.md)
    row = uow.connection.execute(_WALLET_AND_DUE, {"t": tenant_id}).one_or_none()
    if row is None:
        get_wallet(uow, tenant_id)
        row = uow.connection.execute(_WALLET_AND_DUE, {"t": tenant_id}).one()
    values = dict(row._mapping)
    due = values.pop("due")
    wallet = Wallet(**values)
    if due:
        wallet = _end_due(uow, tenant_id)
    grants = live_grants(uow, tenant_id)
    uow.commit()
    return wallet, grants


_DUE = """EXISTS (SELECT 1 FROM reservations WHERE tenant_id = :t AND status = 'active' AND expires_at <= now())
            OR coalesce((SELECT sum(remaining) FROM credit_grants
                         WHERE tenant_id = :t AND remaining > 0 AND expires_at <= now()), 0) > {reserved}"""
# typed like select(wallets) (ids as UUIDs), columns named in the table's order
_WALLET_AND_DUE = text(
    f"SELECT {', '.join('w.' + c.name for c in wallets.c)}, {_DUE.format(reserved='w.reserved_balance')} AS due "
    "FROM wallets w WHERE w.tenant_id = :t").columns(*wallets.c, column("due", Boolean))


def end_what_is_due(uow: UnitOfWork, tenant_id: str, wallet: Wallet | None = None) -> Wallet | None:
    """End the holds past their TTL and the credits past their expiry now, under the wallet's lock, if
    there are any (the wallet after that), else nothing (and no lock). For answers about the present
    — the wallet, the current month's draft — that must not show what has expired as still there
    merely because the beat job has not come round yet. The caller commits."""
    if wallet is None:
        row = uow.connection.execute(select(wallets).where(wallets.c.tenant_id == tenant_id)).one_or_none()
        if row is None:
            return None  # no wallet, nothing to end (and none is created for asking)
        wallet = Wallet(**row._mapping)
    due = uow.connection.execute(cached_text(f"SELECT {_DUE.format(reserved=':reserved')}"),
                                 {"t": tenant_id, "reserved": wallet.reserved_balance}).scalar_one()
    if not due:
        return None
    return _end_due(uow, tenant_id)


def _end_due(uow: UnitOfWork, tenant_id: str) -> Wallet:
    book = WalletBook.open(uow, tenant_id)
    book.expire_due()
    book.flush()
    return book.wallet
