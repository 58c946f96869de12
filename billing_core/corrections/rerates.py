"""Re-rate a period after a catalog correction.

A run covers the charged usage events whose occurredAt is in [start, end) — of every tenant, or one —
and, with an item filter (category, provider, model, unit), the events with at least one matching item
(the whole event is re-priced: its other items price as before unless their price was corrected too).
Events priced by a binding quote keep the quote's prices and are left out; voided events cost nothing.

Each event is re-priced with the catalog as it stands now (corrections included) at its own occurredAt,
with its current items (its last amend's, else its original ones). Graduated items are re-priced from
the start of their month, every charged event of the month in occurrence order, so the month's pieces
add up to the month priced at once with the corrected catalog and items; events outside the range still
count for the position but are not re-rated. An event's charged cost is what it costs now: its charge,
less what corrections credited back plus what they debited, less earlier re-rates' differences (refunds
are money given back, not a price, and do not count). So a second run over the same range and catalog
finds no difference and posts nothing.

Per tenant, one transaction under the wallet's lock: the per-event differences (rerate_events, which
statements and notes read), one `correction` ledger entry for the tenant's total (a credit into a new
paid grant, or a debit drawn like a charge), the budget spend of each event's period, a credit or debit
note per invoiced month it touches, a `usage.corrected` notification, and the tenant's row of the run
(rerate_tenants, unique per tenant and run). A tenant is therefore posted exactly once per run: a worker
killed mid-way loses at most the transaction in flight, and the redelivered task (acks late) or a
second POST with the same key resumes with the tenants not yet posted. Ledger rows are never edited.

A sub-account's events are re-rated at both levels (issue 21), in the same transaction, its wallet
locked first, then its agency's: the sub-account at its resale prices as they stand now, the agency at
its own price of the event's items at the event's acceptance (its catalog now; an event with a
graduated item at the agency's level keeps the agency's price: its month position is not replayed).
The agency's side is one `correction` entry per moved event naming its debit (agencies/credits.py,
as corrections do), recorded on the event's `agency_charges` row (`*_corrected`), so the agency's
margins and a second run stay right. An agency-funded sub-account's wallet never moves: only its
resale record (and its budgets) do. A sub-account's usage from before it was attached (no
`agency_charges` row) was charged at its own prices then and is not re-rated.
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select, text, update

from billing_core import idempotency, money
from billing_core.catalog import CATALOG, price_items
from billing_core.catalog.models import GRADUATED
from billing_core.catalog.positions import ReplayedPositions, UsageItem, month_of
from billing_core.catalog.prices import CatalogKey
from billing_core.corrections.history import event_corrections
from billing_core.corrections.tables import rerate_events, rerate_runs, rerate_tenants
from billing_core.db import UnitOfWork
from billing_core.documents import credit_notes
from billing_core.errors import BillingError, NotFound, ValidationFailed
from billing_core.ledger.book import WalletBook
from billing_core.ledger.model import EntryType, GrantKind
from billing_core.ledger.wallets import debit_for_event
from billing_core.notifications import outbox

ZERO = Decimal(0)
RUNNING, COMPLETED, FAILED, DRY_RUN = "running", "completed", "failed", "dry_run"


@dataclass(frozen=True)
class RerateScope:
    start: datetime
    end: datetime
    tenant_id: str | None = None
    category: str | None = None
    provider: str | None = None
    model: str | None = None
    unit: str | None = None

    def matches(self, key: CatalogKey) -> bool:
        wanted = (self.category, self.provider, self.model, self.unit)
        return all(w is None or w == k for w, k in zip(wanted, key, strict=True))

    def check(self) -> None:
        if self.end <= self.start:
            raise ValidationFailed("to", "must be after from")


@dataclass(frozen=True)
class EventRerate:
    usage_event_id: uuid.UUID
    feature_key: str
    occurred_at: datetime
    charged_at: datetime
    charged: Decimal
    rerated: Decimal
    # a sub-account's event: what its agency pays for it now and would pay re-rated (None: no change)
    agency_charged: Decimal | None = None
    agency_rerated: Decimal | None = None
    billed_by_agency: bool = False  # an agency-funded sub-account's: its own wallet paid nothing
    two_levels: bool = False  # a sub-account's event with its pair (resale, agency price) recorded

    @property
    def agency_difference(self) -> Decimal:
        if self.agency_charged is None or self.agency_rerated is None:
            return ZERO
        return money.subtract(self.agency_charged, self.agency_rerated)

    @property
    def difference(self) -> Decimal:
        return money.subtract(self.charged, self.rerated)


@dataclass
class TenantRerate:
    tenant_id: str
    events: list[EventRerate] = field(default_factory=list)
    ledger_entry_id: uuid.UUID | None = None

    @property
    def charged_total(self) -> Decimal:
        return money.total(e.charged for e in self.events)

    @property
    def rerated_total(self) -> Decimal:
        return money.total(e.rerated for e in self.events)

    @property
    def difference(self) -> Decimal:
        return money.subtract(self.charged_total, self.rerated_total)

    @property
    def wallet_difference(self) -> Decimal:
        """What moves the tenant's own wallet: all of it, but an agency-funded sub-account's events."""
        return money.total(e.difference for e in self.events if not e.billed_by_agency)

    def totals(self) -> TenantTotals:
        return TenantTotals(self.tenant_id, len(self.events), self.charged_total, self.rerated_total,
                            self.difference, self.ledger_entry_id)


@dataclass(frozen=True)
class TenantTotals:
    tenant_id: str
    events: int
    charged_total: Decimal
    rerated_total: Decimal
    difference: Decimal
    ledger_entry_id: uuid.UUID | None = None


@dataclass(frozen=True)
class RerateRun:
    id: uuid.UUID | None
    status: str
    scope: RerateScope
    tenants: list[TenantTotals]
    error: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    replayed: bool = False

    @property
    def difference(self) -> Decimal:
        return money.total(t.difference for t in self.tenants)


def tenants_in_scope(uow: UnitOfWork, scope: RerateScope) -> list[str]:
    """The tenants with charged usage that occurred in the range (an operator's cross-tenant scan)."""
    one = "AND tenant_id = :tenant_id" if scope.tenant_id is not None else "/* citus:operator-scan rerate-candidates */"
    return list(uow.connection.execute(text(
        "SELECT DISTINCT tenant_id FROM usage_events WHERE status = 'charged' AND occurred_at >= :start "
        f"AND occurred_at < :end {one} ORDER BY tenant_id"),
        {"start": scope.start, "end": scope.end, "tenant_id": scope.tenant_id}).scalars())


def rate_tenant(uow: UnitOfWork, tenant_id: str, scope: RerateScope) -> TenantRerate:
    """What the tenant's events in scope cost now and would cost re-rated (nothing written)."""
    first_month = month_of(scope.start)
    last_month = month_of(scope.end - timedelta(microseconds=1))
    months_end = (last_month + timedelta(days=32)).replace(day=1)
    params = {"t": tenant_id, "start": first_month, "end": months_end}
    events = uow.connection.execute(text("""
        SELECT e.id, e.feature_key, e.occurred_at, e.created_at, e.charged_at, e.total_cost, e.quote_id
        FROM usage_events e
        WHERE e.tenant_id = :t AND e.status = 'charged' AND e.occurred_at >= :start AND e.occurred_at < :end
        ORDER BY e.occurred_at, e.seq
    """), params).all()
    if not events:
        return TenantRerate(tenant_id)
    ids = [e.id for e in events]
    items: dict[uuid.UUID, list[UsageItem]] = defaultdict(list)
    billed: dict[uuid.UUID, list[tuple[CatalogKey, Decimal]]] = defaultdict(list)
    bursts: dict[uuid.UUID, Decimal] = {}  # a burst call is priced at a multiple of its items (calls)
    for row in uow.connection.execute(text("""
        SELECT usage_event_id, category, provider, model, unit, quantity, pricing
        FROM usage_event_items WHERE tenant_id = :t AND usage_event_id = ANY(:ids) ORDER BY usage_event_id, position
    """), {"t": tenant_id, "ids": ids}):
        items[row.usage_event_id].append(UsageItem(row.category, row.provider, row.model, row.unit, row.quantity))
        if row.pricing and row.pricing.get("burstMultiplier"):
            bursts[row.usage_event_id] = Decimal(row.pricing["burstMultiplier"])
        if row.pricing and row.pricing.get("pricingModel") == GRADUATED:
            billed[row.usage_event_id].append(((row.category, row.provider, row.model, row.unit),
                                               Decimal(row.pricing["billedQuantity"])))
    found = event_corrections(uow.connection, tenant_id, ids)
    voided = found.voided
    for event_id, amended in found.amended.items():
        items[event_id] = [UsageItem(i["category"], i["provider"], i["model"], i["unit"], Decimal(i["quantity"]))
                           for i in amended]
        billed[event_id] = [
            ((i["category"], i["provider"], i["model"], i["unit"]), Decimal(i["pricing"]["billedQuantity"]))
            for i in amended if i.get("pricing") and i["pricing"].get("pricingModel") == GRADUATED]
    corrected: dict[uuid.UUID, Decimal] = dict(uow.connection.execute(text("""
        SELECT usage_event_id, sum(amount) FROM ledger_entries
        WHERE tenant_id = :t AND entry_type = 'correction' AND usage_event_id = ANY(:ids) GROUP BY usage_event_id
    """), {"t": tenant_id, "ids": ids}).all())
    rerated_before: dict[uuid.UUID, Decimal] = dict(uow.connection.execute(text("""
        SELECT r.usage_event_id, sum(r.difference) FROM rerate_events r
        JOIN rerate_tenants d ON d.tenant_id = r.tenant_id AND d.run_id = r.run_id
        WHERE r.tenant_id = :t AND r.usage_event_id = ANY(:ids) GROUP BY r.usage_event_id
    """), {"t": tenant_id, "ids": ids}).all())
    # a sub-account's charged events with their pair (resale, agency price), net of what was corrected
    from billing_core.agencies.tables import agency_charges
    from billing_core.agencies.tree import AGENCY, find_sub_account

    sub = find_sub_account(uow, tenant_id)
    pairs: dict[uuid.UUID, Any] = {}
    if sub is not None:
        c = agency_charges.c
        pairs = {r.usage_event_id: r for r in uow.connection.execute(select(agency_charges).where(
            c.tenant_id == sub.agency_id, c.sub_account_id == tenant_id, c.usage_event_id.in_(ids)))}
    catalog = CATALOG.for_tenant(uow, tenant_id)
    walk = ReplayedPositions(uow, tenant_id)
    result = TenantRerate(tenant_id)
    for event in events:
        if event.id in voided:
            continue
        in_scope = (scope.start <= event.occurred_at < scope.end and event.quote_id is None
                    and any(scope.matches(i.key) for i in items[event.id])
                    and (sub is None or event.id in pairs))  # before its attachment: its own prices then
        if event.quote_id is not None:  # priced by its quote: it only moves the month's positions
            advances = [(key, event.occurred_at, quantity) for key, quantity in billed[event.id]]
            rerated = None
        else:
            priced = price_items(uow, tenant_id, items[event.id], event.occurred_at, catalog,
                                 walk)
            advances = [p.advance for p in priced if p.advance is not None]
            rerated = money.total(p.cost for p in priced)
            if event.id in bursts:
                rerated = money.multiply(rerated, bursts[event.id])
        walk.moved(advances)
        if in_scope and rerated is not None:
            pair = pairs.get(event.id)
            billed_by_agency = sub is not None and sub.funding == AGENCY
            if pair is not None and billed_by_agency:  # no wallet entry of its own: its record says it all
                charged = money.subtract(pair.resale_amount, pair.resale_corrected)
            else:
                charged = money.subtract(money.subtract(event.total_cost or ZERO, corrected.get(event.id) or ZERO),
                                         rerated_before.get(event.id) or ZERO)
            agency_charged, agency_rerated = (None, None) if pair is None else _agency_rerate(
                uow, pair, items[event.id], event.created_at, bursts.get(event.id))
            result.events.append(EventRerate(event.id, event.feature_key, event.occurred_at, event.charged_at,
                                             charged, rerated, agency_charged, agency_rerated,
                                             billed_by_agency and pair is not None, pair is not None))
    return result


def _agency_rerate(uow: UnitOfWork, pair: Any, items: list[UsageItem], at: datetime,
                   burst: Decimal | None) -> tuple[Decimal | None, Decimal | None]:
    """What the agency pays now for its sub-account's event (its price less what refunds and corrections
    gave back... of its price: refunds are money given back, not a price, so only corrections count)
    and its price of the items now, at the event's acceptance; (None, None) when that price needs the
    agency's graduated month position (not replayed) or is missing."""
    from billing_core.errors import PriceNotFound

    agency_id = pair.tenant_id
    try:
        priced = price_items(uow, agency_id, items, at, CATALOG.for_tenant(uow, agency_id))
    except (PriceNotFound, ArithmeticError):
        return None, None
    if any(p.price.pricing_model == GRADUATED for p in priced):
        return None, None
    rerated = money.total(p.cost for p in priced)
    if burst is not None:
        rerated = money.multiply(rerated, burst)
    return money.subtract(pair.agency_amount, pair.agency_corrected), rerated


def dry_run(uow: UnitOfWork, scope: RerateScope) -> RerateRun:
    """Every tenant's differences, without writing anything."""
    scope.check()
    tenants = [rate_tenant(uow, tenant, scope) for tenant in tenants_in_scope(uow, scope)]
    uow.rollback()
    return RerateRun(None, DRY_RUN, scope, [t.totals() for t in tenants if t.events])


def _fingerprint(scope: RerateScope) -> str:
    return idempotency.fingerprint("rerate", {k: v.isoformat() if isinstance(v, datetime) else v
                                              for k, v in scope.__dict__.items()})


def start_run(uow: UnitOfWork, scope: RerateScope, idempotency_key: str, *, requested_by: str | None) -> RerateRun:
    """Record a run (status running) and commit; the caller enqueues it. The same key again answers
    that run (the caller enqueues it again while it is still running: a resume); another request
    under the key is an IdempotencyConflict."""
    scope.check()
    run_id = uuid.uuid4()
    row = uow.connection.execute(text("""
        INSERT INTO rerate_runs (id, idempotency_key, request_fingerprint, period_start, period_end, tenant_id,
                                 category, provider, model, unit, status, requested_by)
        VALUES (:id, :key, :fingerprint, :start, :end, :tenant_id, :category, :provider, :model, :unit, 'running',
                :requested_by)
        ON CONFLICT (idempotency_key) DO NOTHING RETURNING id
    """), {"id": run_id, "key": idempotency_key, "fingerprint": _fingerprint(scope), "start": scope.start,
           "end": scope.end, "tenant_id": scope.tenant_id, "category": scope.category, "provider": scope.provider,
           "model": scope.model, "unit": scope.unit, "requested_by": requested_by}).first()
    uow.commit()
    existing = uow.connection.execute(select(rerate_runs).where(rerate_runs.c.idempotency_key == idempotency_key)).one()
    if row is None and existing.request_fingerprint != _fingerprint(scope):
        raise idempotency.conflict(idempotency_key)
    return get_run(uow, existing.id, replayed=row is None)


def _scope_of(row: Any) -> RerateScope:
    return RerateScope(row.period_start, row.period_end, row.tenant_id, row.category, row.provider, row.model,
                       row.unit)


def get_run(uow: UnitOfWork, run_id: uuid.UUID, *, replayed: bool = False) -> RerateRun:
    row = uow.connection.execute(select(rerate_runs).where(rerate_runs.c.id == run_id)).one_or_none()
    if row is None:
        raise NotFound(f"re-rate {run_id} not found")
    # the tenants posted so far with events in scope (a cross-tenant read of an operator's run, by its id)
    tenants = [TenantTotals(t.tenant_id, t.events, t.charged_total, t.rerated_total, t.difference, t.ledger_entry_id)
               for t in uow.connection.execute(select(rerate_tenants).prefix_with(
                   "/* citus:operator-scan operator-reports */").where(rerate_tenants.c.run_id == run_id,
                                                                           rerate_tenants.c.events > 0)
                                               .order_by(rerate_tenants.c.tenant_id))]
    return RerateRun(row.id, row.status, _scope_of(row), tenants, row.error, row.created_at, row.finished_at, replayed)


def apply_tenant(uow: UnitOfWork, run_id: uuid.UUID, scope: RerateScope, tenant_id: str) -> TenantRerate | None:
    """Post one tenant's differences of a run, once (see the module), and commit; None when this
    tenant of the run was posted before."""
    book = WalletBook.open(uow, tenant_id)  # the tenant's charges, corrections and re-rates, one at a time
    done = uow.connection.execute(select(rerate_tenants.c.run_id).where(
        rerate_tenants.c.tenant_id == tenant_id, rerate_tenants.c.run_id == run_id)).first()
    if done is not None:
        uow.rollback()
        return None
    found = post_tenant(uow, book, run_id, scope, tenant_id)
    uow.commit()
    return found


def post_tenant(uow: UnitOfWork, book: WalletBook, run_id: uuid.UUID, scope: RerateScope, tenant_id: str, *,
                notify: bool = True) -> TenantRerate:
    """Write one tenant's differences of a run in the caller's transaction, under its wallet lock (no commit)."""
    found = rate_tenant(uow, tenant_id, scope)
    moved = [e for e in found.events if e.difference != 0]
    if moved:
        uow.connection.execute(insert(rerate_events), [
            {"tenant_id": tenant_id, "run_id": run_id, "usage_event_id": e.usage_event_id, "charged": e.charged,
             "rerated": e.rerated, "difference": e.difference,
             "agency_difference": e.agency_difference if e.two_levels else None} for e in moved])
    difference = found.wallet_difference
    record = None
    entry: dict[str, Any] = {"reference": f"rerate:{run_id}", "idempotency_key": f"rerate:{run_id}",
             "description": f"re-rate of {scope.start.isoformat()} to {scope.end.isoformat()}", "created_by": None}
    if difference > 0:
        record, _ = book.add_grant(difference, kind=GrantKind.PAID, source="rerate", entry_type=EntryType.CORRECTION,
                                   **entry)
    elif difference < 0:
        record = book.debit(-difference, entry_type=EntryType.CORRECTION, **entry)
    for e in moved:
        if e.billed_by_agency:  # its wallet moves nothing: a zero entry (naming the event's zero debit) dates
            # the event's re-rate in its chain, for its invoice (invoicing/invoices.py, _DRAFT_AGENCY_CORRECTED)
            zero_debit = debit_for_event(uow, tenant_id, e.usage_event_id)
            if zero_debit is not None:
                book.debit(ZERO, entry_type=EntryType.CORRECTION, usage_event_id=e.usage_event_id,
                           related_entry_id=zero_debit.id, **entry)
    for e in moved:
        book.budgets.spend(e.feature_key, e.occurred_at, -e.difference)
    # a sub-account's events: its agency's level too (its wallet after the sub-account's, already locked)
    agency_moved = _rerate_agency(uow, tenant_id, run_id, found.events)
    if record is not None and agency_moved is not None:
        record["agency_amount"] = agency_moved  # the operator's margins: what LAD's revenue moved by
    book.flush()
    if record is not None:
        found.ledger_entry_id = record["id"]
        _notes(uow, tenant_id, run_id, record["id"], moved)
    if record is not None and notify:
        outbox.enqueue(uow, tenant_id, "usage.corrected", {
            "rerateId": str(run_id), "from": scope.start.isoformat(), "to": scope.end.isoformat(),
            "events": len(moved), "difference": money.format_decimal(difference),
            "currency": "USD", "transactionId": str(record["id"])})
    uow.connection.execute(insert(rerate_tenants).values(
        tenant_id=tenant_id, run_id=run_id, events=len(found.events), charged_total=found.charged_total,
        rerated_total=found.rerated_total, difference=found.difference, ledger_entry_id=found.ledger_entry_id,
        created_at=func.now()))
    return found


def _rerate_agency(uow: UnitOfWork, tenant_id: str, run_id: uuid.UUID, events: list[EventRerate]) -> Decimal | None:
    """Move the agency's wallet by each of its sub-account's events' difference at its price, and the
    events' records at both levels (agencies/credits.correct_agency: the resale record moves by the
    re-rate's resale difference, the agency's price by its own); the total the agency's price moved
    by, or None when no event is a sub-account's."""
    from billing_core.agencies.credits import charge_row, correct_agency, note_to_agency

    two_levels = [e for e in events if e.two_levels]
    if not two_levels:
        return None
    total = ZERO
    for e in two_levels:
        if e.difference == 0 and e.agency_difference == 0:
            continue
        row = charge_row(uow, tenant_id, e.usage_event_id)  # as it stands before this re-rate
        agency_entry = correct_agency(uow, tenant_id, e.usage_event_id, e.difference, e.agency_difference,
                                      reason=f"re-rate {run_id}", created_by=None)
        if row is not None and agency_entry is not None:  # the agency's month invoiced: LAD's note for its price
            note_to_agency(uow, row, agency_entry, e.agency_difference, uuid.uuid5(run_id, str(e.usage_event_id)),
                           reason=f"re-rate {run_id}", action="rerate")
        total = money.add(total, e.agency_difference)
    return total


def record_month_rerate(uow: UnitOfWork, book: WalletBook, tenant_id: str, month: datetime,
                        correction_id: uuid.UUID) -> TenantRerate:
    """The re-rate of one tenant's month that a void or amend of a graduated item brings with it (same
    transaction): recorded as a completed run keyed by the correction, so GET /rerates shows it too."""
    end = (month + timedelta(days=32)).replace(day=1)
    run_id = uuid.uuid5(correction_id, "month")
    scope = RerateScope(month, end, tenant_id)
    uow.connection.execute(insert(rerate_runs).values(
        id=run_id, idempotency_key=f"correction:{correction_id}", request_fingerprint="correction",
        period_start=month, period_end=end, tenant_id=tenant_id, status=COMPLETED, requested_by="correction",
        created_at=func.now(), finished_at=func.now()))
    return post_tenant(uow, book, run_id, scope, tenant_id, notify=False)


def _notes(uow: UnitOfWork, tenant_id: str, run_id: uuid.UUID, entry_id: uuid.UUID, moved: list[EventRerate]) -> None:
    """A credit or debit note per invoiced month the run changed (by each event's charge month)."""
    by_month: dict[datetime, list[EventRerate]] = defaultdict(list)
    for e in moved:
        by_month[month_of(e.charged_at)].append(e)
    for month, found in sorted(by_month.items()):
        invoice = credit_notes.finalized_invoice(uow, tenant_id, month)
        amount = money.total(e.difference for e in found)
        if invoice is None or amount == 0:
            continue
        by_feature: dict[str, list[EventRerate]] = defaultdict(list)
        for e in found:
            by_feature[e.feature_key].append(e)
        lines = [{"featureKey": feature, "category": "*", "provider": "*", "model": "*", "unit": "events",
                  "quantityBefore": str(len(events)), "amountBefore": money.format_decimal(money.total(
                      e.charged for e in events)),
                  "quantityAfter": str(len(events)), "amountAfter": money.format_decimal(money.total(
                      e.rerated for e in events))} for feature, events in sorted(by_feature.items())]
        credit_notes.issue(uow, tenant_id, invoice, correction_id=uuid.uuid5(run_id, str(invoice.id)),
                           usage_event_id=None, ledger_entry_id=entry_id, amount=amount,
                           reason=f"re-rate {run_id}", lines=lines)


def run(uow_factory: Any, run_id: uuid.UUID) -> str:
    """Post every tenant of a running run not posted yet, then mark it completed (or failed, with the
    error, when a tenant cannot be re-rated: its transaction rolled back, nothing of it was posted)."""
    with uow_factory() as uow:
        row = uow.connection.execute(select(rerate_runs).where(rerate_runs.c.id == run_id)).one_or_none()
        if row is None or row.status != RUNNING:
            return row.status if row is not None else "missing"
        scope = _scope_of(row)
        tenants = tenants_in_scope(uow, scope)
    status, error = COMPLETED, None
    for tenant_id in tenants:
        try:
            with uow_factory() as uow:
                apply_tenant(uow, run_id, scope, tenant_id)
        except BillingError as exc:  # a price missing at an event's time, say: a person decides
            status, error = FAILED, f"{tenant_id}: {exc.message}"
            break
    with uow_factory() as uow:
        uow.connection.execute(update(rerate_runs).where(rerate_runs.c.id == run_id, rerate_runs.c.status == RUNNING)
                               .values(status=status, error=error, finished_at=func.now()))
        uow.commit()
    return status
