"""Credits in and out by administrators: top-ups (credit grants), refunds of debits, adjustments."""
from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select

from billing_core import idempotency, money
from billing_core.db import UnitOfWork
from billing_core.documents import receipts
from billing_core.errors import (
    InsufficientBalance,
    NotFound,
    RefundBilledByAgency,
    RefundExceeded,
    ValidationFailed,
)
from billing_core.ledger import expiry
from billing_core.ledger.book import WalletBook, draw_order
from billing_core.ledger.commands import AdjustmentRequest, RefundRequest, TopUpRequest
from billing_core.ledger.model import EntryType, Grant, LedgerEntry
from billing_core.ledger.tables import credit_grants, grant_draws, ledger_entries
from billing_core.ledger.wallets import get_entry
from billing_core.usage.commands import fingerprint_body
from billing_core.usage.tables import usage_events


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


def _commit(uow: UnitOfWork, book: WalletBook, key: str, purchase: Grant | None = None,
            description: str | None = None) -> CreditResult:
    """Write the book, remember the entry for replays, commit; answered as a replay would be. A
    `purchase` (a paid top-up's grant) gets its receipt in the same transaction."""
    entry_id = book.flush()[-1]
    if purchase is not None:
        receipts.issue_for_grant(uow, purchase, description=description)
    idempotency.record_result(uow, book.tenant_id, key, ledger_entry_id=entry_id)
    entry = book.entries([entry_id])[0]
    grant = get_grant(uow, book.tenant_id, entry.grant_id)
    uow.commit()
    return CreditResult(entry, replayed=False, grant=grant)


def top_up(uow: UnitOfWork, tenant_id: str, command: TopUpRequest, *, created_by: str | None,
           receipt: bool = True) -> CreditResult:
    """Credit the wallet with a new grant and commit; a repeated key replays the first entry.
    Top-ups work on a blocked wallet too. `receipt=False`: LAD received no money (an agency crediting
    its sub-account with what its client paid it), so no receipt is issued."""
    key = command.idempotencyKey
    replay = _claimed(uow, tenant_id, key, "topup", command)
    if replay is not None:
        return replay
    book = WalletBook.open(uow, tenant_id)
    _future(book, command)
    _, grant = book.add_grant(command.amount, kind=command.kind, source="topup", priority=command.priority,
                              expires_at=command.expiresAt, reference=key, description=command.description,
                              idempotency_key=key, created_by=created_by)
    # an operator's paid top-up records money received: it issues a receipt (promotional ones do not)
    return _commit(uow, book, key, purchase=grant if receipt else None,
                   description=command.description or "Credit purchase")


def adjust(uow: UnitOfWork, tenant_id: str, command: AdjustmentRequest, *, created_by: str | None) -> CreditResult:
    """A manual correction with a reason: positive adds a grant, negative debits the grants like a
    charge would and must fit in the available balance plus overdraft."""
    key = command.idempotencyKey
    replay = _claimed(uow, tenant_id, key, "adjustment", command)
    if replay is not None:
        return replay
    book = WalletBook.open(uow, tenant_id)
    expiry.end_due(book)
    entry = {"reference": key, "description": command.reason, "idempotency_key": key, "created_by": created_by}
    if command.amount > 0:
        _future(book, command)
        book.add_grant(command.amount, kind=command.kind, source="adjustment", entry_type=EntryType.ADJUSTMENT,
                                  expires_at=command.expiresAt, **entry)
        return _commit(uow, book, key)
    if command.expiresAt is not None:
        raise ValidationFailed("expiresAt", "only a positive adjustment creates a grant that can expire")
    if -command.amount > book.spendable:
        raise InsufficientBalance("the adjustment would take the balance below what the overdraft allows",
                                  {"field": "amount", "required": money.format_decimal(-command.amount),
                                   "available": money.format_decimal(book.available)})
    book.debit(-command.amount, entry_type=EntryType.ADJUSTMENT, **entry)
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
    if original.entry_type != EntryType.DEBIT:
        raise ValidationFailed("transactionId", f"only a debit can be refunded, not a {original.entry_type}")
    _refuse_billed_by_agency(uow, tenant_id, original)
    returnable = _returnable(uow, tenant_id, original)
    left = money.total(amount for _, amount in returnable)
    amount = command.amount if command.amount is not None else left
    if amount == 0 or amount > left:
        raise RefundExceeded("a refund cannot exceed what is left of the debit",
                             {"field": "amount", "debited": money.format_decimal(-original.amount),
                              "refundable": money.format_decimal(left)})
    record = book.restore(amount, returnable, related_entry_id=original.id,
                 usage_event_id=original.usage_event_id, reference=str(original.id), description=command.reason,
                 idempotency_key=key, created_by=created_by)
    if original.usage_event_id is not None:
        event = uow.connection.execute(
            select(usage_events.c.feature_key, usage_events.c.created_at)
            .where(usage_events.c.tenant_id == tenant_id, usage_events.c.id == original.usage_event_id)).one()
        book.budgets.spend(event.feature_key, event.created_at, -amount)
        # a sub-account's event: its agency gets back its share of its price too (agencies/credits.py)
        from billing_core.agencies.credits import refund_agency

        record["agency_amount"] = refund_agency(uow, tenant_id, original.usage_event_id, amount,
                                                reason=command.reason, created_by=created_by)
    return _commit(uow, book, key)


def _refuse_billed_by_agency(uow: UnitOfWork, tenant_id: str, original: LedgerEntry) -> None:
    """Usage billed through an agency is corrected, not refunded, where a refund alone cannot move both
    levels (errors.RefundBilledByAgency): an agency's debit for its sub-account's event, and an
    agency-funded sub-account's zero debit (read for a zero debit only)."""
    event_id = original.sub_account_event_id
    if event_id is None and original.amount == 0 and original.usage_event_id is not None:
        from billing_core.agencies.credits import charge_row
        from billing_core.agencies.holds import funded_by_agency

        if funded_by_agency(uow, tenant_id) is not None and charge_row(
                uow, tenant_id, original.usage_event_id) is not None:
            event_id = original.usage_event_id
    if event_id is not None:
        raise RefundBilledByAgency(
            "this debit is usage billed through an agency: correct the sub-account's event "
            "(POST /usage/<id>/corrections, void or amend), which moves both levels",
            {"field": "transactionId", "usageEventId": str(event_id)})


def _returnable(uow: UnitOfWork, tenant_id: str, original: LedgerEntry) -> list[tuple[uuid.UUID | None, Decimal]]:
    """Per grant the debit drew from, in the order it drew on them (draw_order at the debit's time:
    a grant overdue then was drawn first), what earlier refunds have not yet returned.
    A debit that drew on the debt can be refunded too; that part repays the debt or becomes a grant.
    A debit from before grants existed has no draws: all of it may come back, as a new grant."""
    draws = uow.connection.execute(
        select(credit_grants, grant_draws.c.amount.label("drawn"))
        .join(grant_draws, (grant_draws.c.tenant_id == credit_grants.c.tenant_id)
              & (grant_draws.c.grant_id == credit_grants.c.id))
        .where(grant_draws.c.tenant_id == tenant_id, grant_draws.c.ledger_entry_id == original.id)).all()
    by_grant = {r.id: (Grant(**{c.name: getattr(r, c.name) for c in credit_grants.c}), -r.drawn) for r in draws}
    drawn: dict[uuid.UUID | None, Decimal] = {
        grant.id: amount
        for grant, amount in sorted(by_grant.values(), key=lambda pair: draw_order(pair[0], original.created_at))}
    if not drawn:
        drawn[None] = -original.amount
    refunded = uow.connection.execute(
        select(ledger_entries.c.amount).where(ledger_entries.c.tenant_id == tenant_id,
                                              ledger_entries.c.related_entry_id == original.id,
                                              ledger_entries.c.entry_type.in_([EntryType.REFUND,
                                                                               EntryType.CORRECTION]))
    ).scalars().all()
    # what was refunded (or credited back by a correction) before is taken off the draws last drawn
    # first, as restore() returns them; a correction that debited more returns nothing here
    already = max(Decimal(0), money.total(refunded))
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
