"""Void and amend one usage event.

A correction never edits the event, its items or its debit: it is a row of usage_corrections (the
chain GET /usage/<id> shows) and, when money moves, one `correction` ledger entry tied to the event
(usage_event_id) and its debit (related_entry_id). Its `difference` is what the balance moved
(positive: credited back).

- The event's *priced* cost is its charged cost as corrected so far; its *net* cost is that less what
  refunds gave back. A void credits the net cost back. An amend re-prices the given items at the
  event's own occurredAt (that moment's catalog, override and multiplier; or the binding quote that
  priced the event) and moves the difference from the priced cost: a lower price credits back (never
  more than the net cost, so refunds and corrections together never return more than was charged), a
  higher one debits (drawn like a charge; what the grants cannot cover goes onto the debt — the usage
  happened).
- The budget spend of the period the event occurred in moves with the difference.
- Graduated positions: the month's position moves by the billed-quantity difference (a void takes the
  event's billed quantity out, an amend puts the new one in; the amended items are first priced at the
  month's position without the event's own units). Then, in the same transaction, the tenant's month is
  re-rated as a re-rate run would (billing_core/corrections/rerates.py, recorded as a completed run
  keyed `correction:<id>`): every charged event of the month priced again from the month's start, in
  occurrence order, with its current items, and the differences posted as one more `correction` entry.
  Why: a position that moves changes the price of every unit above it, so only re-pricing the month
  from its start keeps "the pieces equal the whole month priced at once" (the property test checks it);
  attributing the whole tier effect to the corrected event instead would make a void return more or
  less than the event cost, which no reader expects.
- Idempotent per (tenant, idempotencyKey): the same request again answers the first correction; another
  request under the key is an IdempotencyConflict. Corrections of one event are serialized by the
  wallet's lock.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection

from billing_core import idempotency, money
from billing_core.agencies import credits as agency_credits
from billing_core.catalog import CATALOG, TierPositions, price_items
from billing_core.catalog.models import GRADUATED
from billing_core.catalog.positions import month_of
from billing_core.corrections import rerates
from billing_core.corrections.commands import CorrectionRequest
from billing_core.corrections.tables import usage_corrections
from billing_core.db import UnitOfWork
from billing_core.documents import credit_notes
from billing_core.errors import NotFound, ValidationFailed
from billing_core.ledger.book import WalletBook
from billing_core.ledger.credits import _returnable
from billing_core.ledger.model import EntryType, LedgerEntry, UsageEventStatus
from billing_core.ledger.tables import ledger_entries
from billing_core.ledger.wallets import debit_for_event
from billing_core.lifecycle.quotes import QuotedPrices, load_quotes
from billing_core.usage.events import load_items, load_outcome

ZERO = Decimal(0)


@dataclass(frozen=True)
class Correction:
    id: uuid.UUID
    usage_event_id: uuid.UUID
    action: str
    reason: str
    cost_before: Decimal
    cost_after: Decimal
    difference: Decimal
    items: list[dict[str, Any]] | None
    ledger_entry_id: uuid.UUID | None
    created_by: str | None
    created_at: datetime
    transaction: LedgerEntry | None = None
    replayed: bool = False
    credit_note_id: uuid.UUID | None = None  # the note issued when the event's month was invoiced


@dataclass(frozen=True)
class Standing:
    """What an event costs as corrected: charged, less corrections' credits plus their debits (its own
    and its share of re-rates), less refunds."""
    charged: Decimal
    corrected: Decimal  # sum of correction entries (positive: credited back)
    refunded: Decimal
    rerated: Decimal = ZERO  # its differences in posted re-rates (positive: credited back)

    @property
    def priced(self) -> Decimal:
        return money.subtract(money.subtract(self.charged, self.corrected), self.rerated)

    @property
    def net(self) -> Decimal:
        return money.subtract(self.priced, self.refunded)


def standing(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID, charged: Decimal) -> Standing:
    return standing_on(uow.connection, tenant_id, usage_event_id, charged)


def standing_on(connection: Connection, tenant_id: str, usage_event_id: uuid.UUID, charged: Decimal) -> Standing:
    """An event's standing read on `connection` (a report's, which may be the replica's)."""
    c = ledger_entries.c
    sums = dict(connection.execute(
        select(c.entry_type, func.sum(c.amount))
        .where(c.tenant_id == tenant_id, c.usage_event_id == usage_event_id,
               c.entry_type.in_([EntryType.CORRECTION, EntryType.REFUND]))
        .group_by(c.entry_type)).all())
    rerated = connection.execute(text("""
        SELECT coalesce(sum(r.difference), 0) FROM rerate_events r
        JOIN rerate_tenants d ON d.tenant_id = r.tenant_id AND d.run_id = r.run_id
        WHERE r.tenant_id = :t AND r.usage_event_id = :e"""), {"t": tenant_id, "e": usage_event_id}).scalar_one()
    return Standing(charged, sums.get(EntryType.CORRECTION) or ZERO, sums.get(EntryType.REFUND) or ZERO, rerated)


def net_cost(uow: UnitOfWork, tenant_id: str, event: Any) -> Decimal | None:
    """What a charged event costs as corrected (its corrections and its share of re-rates; refunds not
    included): the usage event's netCost. None for an event not charged."""
    if event.status != UsageEventStatus.CHARGED or event.total_cost is None:
        return None
    return standing(uow, tenant_id, event.id, event.total_cost).priced


def _fingerprint(command: CorrectionRequest) -> str:
    return idempotency.fingerprint("correction", command.model_dump(mode="json", exclude={"idempotencyKey",
                                                                                         "tenantId"}))


def list_corrections(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID) -> list[Correction]:
    rows = uow.connection.execute(
        select(*[c for c in usage_corrections.c if c.name not in ("tenant_id", "idempotency_key",
                                                                   "request_fingerprint")])
        .where(usage_corrections.c.tenant_id == tenant_id, usage_corrections.c.usage_event_id == usage_event_id)
        .order_by(usage_corrections.c.created_at, usage_corrections.c.id)).all()
    return [Correction(**r._mapping) for r in rows]


def _replay(uow: UnitOfWork, tenant_id: str, command: CorrectionRequest, usage_event_id: uuid.UUID) -> Correction | None:
    row = uow.connection.execute(
        select(usage_corrections).where(usage_corrections.c.tenant_id == tenant_id,
                                        usage_corrections.c.idempotency_key == command.idempotencyKey)
    ).one_or_none()
    if row is None:
        return None
    if row.request_fingerprint != _fingerprint(command) or row.usage_event_id != usage_event_id:
        raise idempotency.conflict(command.idempotencyKey)
    found = {k: v for k, v in row._mapping.items() if k not in ("tenant_id", "idempotency_key", "request_fingerprint")}
    entry = _entry(uow, tenant_id, row.ledger_entry_id)
    return Correction(**found, transaction=entry, replayed=True)


def _entry(uow: UnitOfWork, tenant_id: str, entry_id: uuid.UUID | None) -> LedgerEntry | None:
    if entry_id is None:
        return None
    row = uow.connection.execute(select(ledger_entries).where(ledger_entries.c.tenant_id == tenant_id,
                                                              ledger_entries.c.id == entry_id)).one()
    return LedgerEntry(**row._mapping)


def correct_usage_event(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID, command: CorrectionRequest, *,
                        created_by: str | None) -> Correction:
    """Void or amend one charged usage event (see the module) and commit; the same request again
    answers the first correction."""
    if command.action == "amend" and not command.items:
        raise ValidationFailed("items", "an amend names the event's corrected items")
    if command.action == "void" and command.items:
        raise ValidationFailed("items", "a void takes no items")
    replay = _replay(uow, tenant_id, command, usage_event_id)
    if replay is not None:
        uow.rollback()
        return replay
    book = WalletBook.open(uow, tenant_id)  # corrections, refunds and charges of the wallet, one at a time
    replay = _replay(uow, tenant_id, command, usage_event_id)  # a concurrent twin committed first
    if replay is not None:
        uow.rollback()
        return replay
    event = load_outcome(uow, tenant_id, usage_event_id).event
    if event.status != UsageEventStatus.CHARGED:
        raise ValidationFailed("action", f"only a charged usage event can be corrected, not a {event.status} one")
    debit = debit_for_event(uow, tenant_id, event.id)
    if debit is None:
        raise NotFound(f"usage event {usage_event_id} has no debit")
    before = standing(uow, tenant_id, event.id, event.total_cost or ZERO)
    occurred = event.occurred
    old_items = load_items(uow, tenant_id, event.id)
    positions = TierPositions(uow, tenant_id, locked=True)
    old_billed = [((i.category, i.provider, i.model, i.unit), occurred, -Decimal(i.pricing["billedQuantity"]))
                  for i in old_items if i.pricing and i.pricing.get("pricingModel") == GRADUATED]
    voided = _voided(uow, tenant_id, event.id)
    new_items: list[dict[str, Any]] | None = None
    taken_out: list[Any] = []  # an amend's graduated units taken out of the month before re-pricing
    if command.action == "void":
        cost_after = ZERO
        moves = [] if voided else _current_billed(uow, tenant_id, event.id, old_billed, occurred)
    else:
        if voided:
            raise ValidationFailed("action", "a voided usage event cannot be amended")
        # the month without this event's own units (its last amend's, if amended)
        taken_out = _current_billed(uow, tenant_id, event.id, old_billed, occurred)
        positions.advance(taken_out)
        catalog = CATALOG.for_tenant(uow, tenant_id)
        prices: Any = catalog
        if event.quote_id is not None:  # an event priced by a binding quote is amended at the quote's prices
            found_quotes = load_quotes(uow, tenant_id, [event.quote_id])
            if event.quote_id in found_quotes:
                prices = QuotedPrices(found_quotes[event.quote_id], catalog)
        priced = price_items(uow, tenant_id, command.items or [], occurred, prices, positions, catalog)
        cost_after = money.total(p.cost for p in priced)
        burst = next((Decimal(i.pricing["burstMultiplier"]) for i in old_items
                      if i.pricing and i.pricing.get("burstMultiplier")), None)
        if burst is not None:  # a burst call stays priced at its multiple (calls)
            cost_after = money.multiply(cost_after, burst)
        moves = [p.advance for p in priced if p.advance is not None]
        new_items = [{"category": p.item.category, "provider": p.item.provider, "model": p.item.model,
                      "unit": p.item.unit, "quantity": money.format_decimal(p.item.quantity),
                      "unitPrice": None if p.price.unit_price is None else money.format_decimal(p.price.unit_price),
                      "cost": money.format_decimal(p.cost), "pricing": p.breakdown()} for p in priced]
    if moves:
        positions.advance(moves)
    # a sub-account's event: its agency's price is corrected too (agencies/credits.py); an agency-funded
    # sub-account's wallet paid nothing (a zero debit), so only the record of its resale amount moves
    pair = agency_credits.charge_row(uow, tenant_id, event.id)
    billed_by_agency, resale_change = False, ZERO
    if pair is not None and debit.amount == 0:
        billed_by_agency = True
        before = Standing(pair.resale_amount, pair.resale_corrected, pair.resale_refunded, before.rerated)
    change = money.subtract(before.priced, cost_after)  # positive: the tenant paid too much
    entry_fields = {"usage_event_id": event.id, "related_entry_id": debit.id, "reference": str(event.id),
                    "description": f"{command.action}: {command.reason}", "idempotency_key": command.idempotencyKey,
                    "created_by": created_by}
    record = None
    difference = ZERO
    if billed_by_agency:
        resale_change = min(change, max(ZERO, before.net)) if change > 0 else change
        book.budgets.spend(event.feature_key, occurred, -resale_change)
        change = ZERO  # nothing moves on its own wallet
        if resale_change != 0:
            # a zero `correction` entry naming the event and its zero debit, as its charge wrote a zero
            # debit: it dates the correction in the sub-account's chain (its invoice shows the corrected
            # line, the resale change read from this correction's row) and carries `agency_amount`
            # (the operator's margins)
            record = book.debit(ZERO, entry_type=EntryType.CORRECTION, **entry_fields)
    if change > 0:
        difference = min(change, max(ZERO, before.net))  # never more back than the tenant still pays
        if difference > 0:
            record = book.restore(difference, _returnable(uow, tenant_id, debit), entry_type=EntryType.CORRECTION,
                                  **entry_fields)
    elif change < 0:
        difference = change
        record = book.debit(-change, entry_type=EntryType.CORRECTION, **entry_fields)
    if difference != 0:
        book.budgets.spend(event.feature_key, occurred, -difference)
    agency_entry = None
    if pair is not None:
        agency_change = agency_credits.agency_correction(uow, pair, command.action, command.items, occurred, old_items)
        if record is not None:  # for the operator's margins: what LAD's own price moved by with it
            record["agency_amount"] = agency_change
        agency_entry = agency_credits.correct_agency(
            uow, tenant_id, event.id, resale_change if billed_by_agency else difference, agency_change,
            reason=f"{command.action}: {command.reason}", created_by=created_by)
    book.flush()
    positions.flush()
    correction_id = uuid.uuid4()
    if pair is not None and agency_entry is not None:
        # the agency's month of its debit is invoiced: LAD's note to the agency for its price
        agency_credits.note_to_agency(uow, pair, agency_entry, agency_change, correction_id,
                                      reason=f"{command.action}: {command.reason}", action=command.action)
    note = None
    invoice = credit_notes.finalized_invoice(uow, tenant_id, debit.created_at) if record and difference else None
    if invoice is not None and record is not None:  # the month is invoiced: it stays so, a note corrects it
        before_items = _held_items(uow, tenant_id, event.id, old_items)
        note = credit_notes.issue(
            uow, tenant_id, invoice, correction_id=correction_id, usage_event_id=event.id,
            ledger_entry_id=record["id"], amount=difference, reason=f"{command.action}: {command.reason}",
            lines=_note_lines(event.feature_key, before_items, new_items or []))
    row = uow.connection.execute(insert(usage_corrections).values(
        id=correction_id, tenant_id=tenant_id, usage_event_id=event.id, action=command.action, reason=command.reason,
        idempotency_key=command.idempotencyKey, request_fingerprint=_fingerprint(command),
        cost_before=before.priced, cost_after=cost_after, difference=difference, items=new_items,
        ledger_entry_id=record["id"] if record else None, created_by=created_by, created_at=func.now(),
    ).returning(usage_corrections.c.created_at)).one()
    transaction = _entry(uow, tenant_id, record["id"]) if record else None
    if moves or taken_out:
        # graduated units moved: the month is priced again from its start, every event in occurrence
        # order, so its pieces stay the whole month priced at once (see the module)
        rerates.record_month_rerate(uow, book, tenant_id, month_of(occurred), correction_id)
    uow.commit()
    return Correction(correction_id, event.id, command.action, command.reason, before.priced, cost_after, difference,
                      new_items, record["id"] if record else None, created_by, row.created_at, transaction,
                      credit_note_id=note.id if note else None)


def _voided(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID) -> bool:
    return uow.connection.execute(
        select(func.count()).where(usage_corrections.c.tenant_id == tenant_id,
                                   usage_corrections.c.usage_event_id == usage_event_id,
                                   usage_corrections.c.action == "void")).scalar_one() > 0


def _current_billed(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID,
                    original: list[tuple[Any, datetime, Decimal]], occurred: datetime) -> list[tuple[Any, datetime, Decimal]]:
    """The graduated units the event holds in its month now (negated, to take them out): its last
    amend's, else its original items'."""
    last = uow.connection.execute(
        select(usage_corrections.c["items"]).where(usage_corrections.c.tenant_id == tenant_id,
                                                usage_corrections.c.usage_event_id == usage_event_id,
                                                usage_corrections.c.action == "amend")
        .order_by(usage_corrections.c.created_at.desc(), usage_corrections.c.id.desc()).limit(1)).scalar_one_or_none()
    if last is None:
        return original
    return [((i["category"], i["provider"], i["model"], i["unit"]), occurred, -Decimal(i["pricing"]["billedQuantity"]))
            for i in last if i.get("pricing") and i["pricing"].get("pricingModel") == GRADUATED]


def _held_items(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID, original: list[Any]) -> list[dict[str, Any]]:
    """The items the event stood at before this correction: its last amend's (this one excluded:
    not written yet), else its original items."""
    last = uow.connection.execute(
        select(usage_corrections.c["items"]).where(usage_corrections.c.tenant_id == tenant_id,
                                                   usage_corrections.c.usage_event_id == usage_event_id,
                                                   usage_corrections.c.action == "amend")
        .order_by(usage_corrections.c.created_at.desc(), usage_corrections.c.id.desc()).limit(1)).scalar_one_or_none()
    if last is not None:
        return list(last)
    return [{"category": i.category, "provider": i.provider, "model": i.model, "unit": i.unit,
             "quantity": money.format_decimal(i.quantity), "cost": money.format_decimal(i.cost or ZERO)}
            for i in original]


def _note_lines(feature_key: str, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per catalog item: quantity and amount before and after the correction."""
    lines: dict[tuple[str, str, str, str], dict[str, Decimal]] = {}
    for side, items in (("Before", before), ("After", after)):
        for i in items:
            key = (i["category"], i["provider"], i["model"], i["unit"])
            line = lines.setdefault(key, {"quantityBefore": ZERO, "amountBefore": ZERO,
                                          "quantityAfter": ZERO, "amountAfter": ZERO})
            line[f"quantity{side}"] = money.add(line[f"quantity{side}"], Decimal(i["quantity"]))
            line[f"amount{side}"] = money.add(line[f"amount{side}"], Decimal(i["cost"]))
    return [{"featureKey": feature_key, "category": k[0], "provider": k[1], "model": k[2], "unit": k[3],
             **{name: money.format_decimal(value) for name, value in v.items()}}
            for k, v in sorted(lines.items())]
