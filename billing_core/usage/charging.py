"""Charging pending usage events: one at a time (the naive mode, kept for comparison) or a wallet's
pending events in groups, each group in one transaction (group commit, the default)."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Uuid, func, select, text, update

from billing_core import money
from billing_core.agencies.charging import AgencyLevel
from billing_core.agencies.tree import find_sub_account
from billing_core.calls.plans import CallPlan, load_plan
from billing_core.catalog import CATALOG, TierPositions, price_items
from billing_core.catalog.models import GRADUATED
from billing_core.db import Money, UnitOfWork, unnest_arrays
from billing_core.errors import (
    BudgetExceeded,
    InsufficientBalance,
    NotFound,
    PriceNotFound,
    ReservationClosed,
    ReservationExceeded,
    ReservationExpired,
    WalletBlocked,
)
from billing_core.ledger import expiry
from billing_core.ledger.book import WalletBook, check_settleable
from billing_core.ledger.model import SettleOutcome, UsageEventStatus
from billing_core.notifications import outbox
from billing_core.usage.events import ChargeOutcome, load_outcome
from billing_core.usage.tables import usage_event_items, usage_events


def charge_usage_event(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID) -> ChargeOutcome:
    """Naive mode: charge one pending usage event in its own transaction and commit, by the same
    rules as a group (see charge_pending_batch). A duplicate delivery finds it settled and changes nothing."""
    book = WalletBook.open(uow, tenant_id)
    row = uow.connection.execute(
        select(*_PENDING_COLUMNS)
        .where(usage_events.c.tenant_id == tenant_id, usage_events.c.id == usage_event_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"usage event {usage_event_id} not found")
    if row.status != UsageEventStatus.PENDING:
        uow.rollback()
        return load_outcome(uow, tenant_id, usage_event_id)
    _settle_group(uow, book, [row])
    uow.commit()
    return load_outcome(uow, tenant_id, usage_event_id)


@dataclass(frozen=True)
class StalePending:
    tenant_id: str
    usage_event_id: uuid.UUID
    task_id: uuid.UUID
    enqueue_count: int


def claim_stale_pending(uow: UnitOfWork, older_than_seconds: int, limit: int = 1000) -> list[StalePending]:
    """Mark pending events whose last enqueue is older than their retry age as enqueued now, and
    return them for enqueueing again (their message was lost, or their worker died).

    The retry age doubles with each enqueue (capped at 64×), so a backlog the workers are still
    working through is not flooded with duplicates. This is the one deliberately cross-tenant query:
    a housekeeping scan over the pending index. SKIP LOCKED leaves events a worker is charging now,
    and concurrent sweeps never claim the same event twice.
    """
    backoff = func.power(2, func.least(usage_events.c.enqueue_count - 1, 6))
    is_stale = (usage_events.c.status == UsageEventStatus.PENDING,
                usage_events.c.enqueued_at
                < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_seconds * backoff))
    # two steps, so that it runs on Citus: the tenants with stale events, oldest first and without a lock
    # (an operator-wide scan), then each tenant's events claimed by a statement filtered on the tenant
    tenants = uow.connection.execute(
        select(usage_events.c.tenant_id).prefix_with("/* citus:operator-scan pending-candidates */")
        .where(*is_stale)
        .group_by(usage_events.c.tenant_id)
        .order_by(func.min(usage_events.c.enqueued_at))
        .limit(limit)
    ).scalars().all()
    claimed: list[StalePending] = []
    for tenant_id in tenants:
        if len(claimed) >= limit:
            break
        stale = (
            select(usage_events.c.id)
            .where(usage_events.c.tenant_id == tenant_id, *is_stale)
            .order_by(usage_events.c.enqueued_at)
            .limit(limit - len(claimed))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        rows = uow.connection.execute(
            update(usage_events)
            .where(usage_events.c.tenant_id == tenant_id, usage_events.c.id.in_(stale),
                   usage_events.c.status == UsageEventStatus.PENDING)
            .values(enqueued_at=func.now(), enqueue_count=usage_events.c.enqueue_count + 1)
            .returning(usage_events.c.tenant_id, usage_events.c.id, usage_events.c.task_id,
                       usage_events.c.enqueue_count)
        ).all()
        claimed += [StalePending(r.tenant_id, r.id, r.task_id, r.enqueue_count) for r in rows]
    uow.commit()
    return claimed




@dataclass(frozen=True)
class Settled:
    usage_event_id: uuid.UUID
    status: str
    rejection_code: str | None
    accepted_at: datetime
    request_id: str | None


_PENDING_COLUMNS = (usage_events.c.id, usage_events.c.status, usage_events.c.created_at, usage_events.c.feature_key,
                    usage_events.c.external_reference_id, usage_events.c.idempotency_key, usage_events.c.user_id,
                    usage_events.c.reservation_id, usage_events.c.quote_id, usage_events.c.request_id,
                    usage_events.c.occurred_at, usage_events.c.seq)


def charge_pending_batch(uow: UnitOfWork, tenant_id: str, limit: int,
                         on_locked: Callable[[], None] | None = None) -> list[Settled]:
    """Group commit: claim up to `limit` of the tenant's pending events in event order, price them,
    and settle them all in this one transaction, then commit.

    One wallet lock, one multi-row insert of ledger entries whose balance_before/balance_after form
    an unbroken chain in event order, one update of each kind of row touched. Each event is charged
    or rejected on its own merits: after a charge that does not fit, a cheaper one still may.
    Invariant: the wallet is locked before any event is claimed, so a wallet's groups are settled one
    after another in arrival order; FOR UPDATE SKIP LOCKED means no two claims share an event; only
    `pending` events are claimed, so each is settled exactly once (the ledger's one-debit-per-event
    index and the one-settlement-per-hold index stand behind that).
    `on_locked` runs once the wallet is locked and before anything is claimed (the worker clears the
    wallet's wake-up there: whatever commits after the claim's snapshot sends a new one).
    """
    # The wallet first: a second worker on this wallet waits here and then claims the next events,
    # so a wallet's events are settled in arrival order even across workers.
    book = WalletBook.open(uow, tenant_id)
    if on_locked is not None:
        on_locked()
    events = uow.connection.execute(
        select(*_PENDING_COLUMNS)
        .where(usage_events.c.tenant_id == tenant_id, usage_events.c.status == UsageEventStatus.PENDING)
        .order_by(usage_events.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not events:
        # nothing to charge, but holds and grants past their expiry end here too
        if expiry.end_due(book):
            book.flush()
            uow.commit()
        else:
            uow.rollback()
        return []
    outcomes = _settle_group(uow, book, events)
    uow.commit()
    return [Settled(o.event_id, o.status, o.code, e.created_at, e.request_id)
            for o, e in zip(outcomes, events, strict=True)]


_REFUSALS = (PriceNotFound, InsufficientBalance, WalletBlocked, BudgetExceeded, ReservationExceeded,
             ReservationExpired, ReservationClosed)


def _settle_group(uow: UnitOfWork, book: WalletBook, events: Sequence[Any]) -> list[SettleOutcome]:
    """Price and settle claimed pending events against the locked wallet, in the order given.

    A sub-account's group whose every event prices at both levels without a month position is first
    settled at its own level before its agency's wallet lock (which every group of the tree waits for),
    under a savepoint; then, under the agency's lock, each charged event is checked and recorded at the
    agency's level in the same order. Should any event be refused at either level, the savepoint is
    rolled back and the group settled again the one-pass way (agency lock first), so outcomes are
    exactly those of that way; the agency's lock is then already held."""
    tenant_id = book.tenant_id
    sub_account = find_sub_account(uow, tenant_id)
    if sub_account is not None:
        savepoint = uow.connection.begin_nested()
        deferred = _DeferredAgency(sub_account)
        outcomes = _settle_group_at(uow, book, events, sub_account, deferred)
        if deferred.usable and all(o.status == UsageEventStatus.CHARGED for o in outcomes) \
                and deferred.replay(uow):
            savepoint.commit()
            return outcomes
        savepoint.rollback()  # the sub-account's wallet and the events as they were: the one-pass way
        book = WalletBook.open(uow, tenant_id)  # its lock is held already: read again as it was
    return _settle_group_at(uow, book, events, sub_account, None)


class _DeferredAgency:
    """The agency's side of a sub-account's group, kept to be done under the agency's lock after the
    sub-account's own writes: only for events priced at both levels before any lock (no month position)."""

    def __init__(self, sub_account: Any):
        self.sub_account = sub_account
        self.prepaid = sub_account.funding == "prepaid"
        self.usable = True
        self.calls: list[tuple[Any, Decimal, Decimal, list[Any], list[Any], list[Any]]] = []
        self._priced: tuple[list[Any], list[Any]] = ([], [])

    def price(self, items: list[Any], at: datetime, priced: list[Any] | None) -> tuple[Decimal, list[Any]]:
        if priced is None:  # needs the agency's month position: only under its lock
            self.usable = False
            return Decimal(0), []
        self._priced = (items, priced)
        return money.total(p.cost for p in priced), [p.advance for p in priced if p.advance is not None]

    def check(self, *args: Any) -> None:
        return None

    def record(self, event: Any, resale: Decimal, agency_cost: Decimal, advances: list[Any]) -> None:
        self.calls.append((event, resale, agency_cost, advances, *self._priced))

    def flush(self) -> None:
        return None

    def replay(self, uow: UnitOfWork) -> bool:
        """Under the agency's lock: check and record every charged event at its level, in order; False
        (nothing of the agency's flushed) when it refuses one."""
        agency = AgencyLevel(uow, self.sub_account)
        for event, resale, agency_cost, advances, items, priced in self.calls:
            agency.price(items, event.created_at, priced)
            try:
                agency.check(event.created_at, resale, agency_cost, event.reservation_id, event.feature_key)
            except _REFUSALS:
                return False
            agency.record(event, resale, agency_cost, advances)
        agency.flush()
        return True


def _settle_group_at(uow: UnitOfWork, book: WalletBook, events: Sequence[Any], sub_account: Any,
                     deferred: _DeferredAgency | None) -> list[SettleOutcome]:
    tenant_id = book.tenant_id
    items: dict[uuid.UUID, list[Any]] = {e.id: [] for e in events}
    for row in uow.connection.execute(_ITEMS_BY_EVENT, {"tenant_id": tenant_id, "ids": [str(i) for i in items]}):
        items[row.usage_event_id].append(row)
    settling = {e.reservation_id for e in events if e.reservation_id is not None}
    book.load_holds(settling)
    # a hold a charge in hand settles is not expired under it; the charge's own time decides
    expiry.end_due(book, keep=settling)

    catalog = CATALOG.for_tenant(uow, tenant_id)
    plan = load_plan(uow.connection, tenant_id)
    bursts: dict[uuid.UUID, Decimal] = {}  # burst calls' events: their items are priced at the multiplier
    # graduated tiers: where each month stands, read under the wallet lock (the book holds it) and
    # advanced event by event, only for the events charged; written with the debits
    positions = TierPositions(uow, tenant_id, locked=True)
    # a sub-account's charge moves its agency's wallet too, in this transaction (agencies/charging.py);
    # what prices without a month position is priced at both levels before the agency's lock, which
    # every sub-account's group waits for
    agency: Any = None
    prepriced: dict[uuid.UUID, tuple[list[Any], list[Any]]] = {}
    if sub_account is not None:
        prepriced = _price_flat(uow, tenant_id, sub_account.agency_id, events, items, catalog)
        agency = deferred if deferred is not None else AgencyLevel(uow, sub_account)
    outcomes: list[SettleOutcome] = []
    repriced: list[dict[str, Any]] = []
    for event in events:
        try:
            if event.quote_id is not None:  # priced at acceptance by a binding quote; it stays so
                cost = money.total(i.cost for i in items[event.id])
                priced = None
                advances = [((i.category, i.provider, i.model, i.unit), event.occurred_at,
                             money.to_decimal(i.billed_quantity))
                            for i in items[event.id] if i.pricing_model == GRADUATED]
            else:
                # priced at its occurrence (a late record's occurredAt): that moment's prices and tier
                # position; it is still settled now, in wallet order
                flat = prepriced.get(event.id)
                priced = flat[0] if flat is not None else price_items(
                    uow, tenant_id, items[event.id], event.occurred_at, catalog, positions)
                cost = money.total(p.cost for p in priced)
                advances = [p.advance for p in priced if p.advance is not None]
            hold = book.holds.get(event.reservation_id) if event.reservation_id is not None else None
            if hold is not None and hold.burst_multiplier is not None:
                cost = money.multiply(cost, hold.burst_multiplier)  # = the sum of the items' multiplied costs
            if agency is None:
                _charge(book, event, cost, plan)
            else:
                flat = prepriced.get(event.id)
                agency_cost, agency_advances = agency.price(items[event.id], event.created_at,
                                                            flat[1] if flat is not None else None)
                agency.check(event.created_at, cost, agency_cost, event.reservation_id, event.feature_key)
                if agency.prepaid:
                    try:
                        _charge(book, event, cost, plan)
                    except InsufficientBalance as short:
                        short.details["wallet"] = "sub_account"
                        raise
                else:  # billed by the agency: a zero entry keeps every charged event's one debit
                    _charge_for_agency(book, event, cost)
                agency.record(event, cost, agency_cost, agency_advances)
        except _REFUSALS as refusal:
            outcomes.append(SettleOutcome(event.id, UsageEventStatus.REJECTED, code=refusal.code,
                                          reason=refusal.message, details=refusal.details))
            continue
        except ArithmeticError as exc:  # a cost no exact context can hold: refuse this event, not the group
            outcomes.append(SettleOutcome(event.id, UsageEventStatus.REJECTED, code="pricing_error",
                                          reason=f"the cost cannot be computed exactly: {type(exc).__name__}",
                                          details={}))
            continue
        if advances:
            positions.advance(advances)
        outcomes.append(SettleOutcome(event.id, UsageEventStatus.CHARGED, total_cost=cost))
        if hold is not None and hold.burst_multiplier is not None:
            bursts[event.id] = hold.burst_multiplier
        # items were priced at acceptance, which is the event's time; rewrite only what differs (a
        # graduated item's place in the month, mostly)
        # (the breakdown follows from the price row, its multiplier, the quantity and the tier start)
        for stored, p in zip(items[event.id], priced or [], strict=False):
            tier_start = None if p.tier_start is None else money.format_decimal(p.tier_start)
            if (p.price.id, p.price.unit_price, p.cost, p.unit_cost, p.provider_cost, tier_start) != (
                    stored.price_id, stored.unit_price, stored.cost, stored.unit_cost, stored.provider_cost,
                    stored.tier_start):
                repriced.append(dict(zip(_REPRICED, (event.id, stored.position, p.price.id, p.price.unit_price,
                                                     p.cost, p.breakdown(), p.unit_cost, p.provider_cost),
                                         strict=True)))

    book.stop_awaiting(settling)
    expiry.end_due(book)  # holds kept for this group's charges that turned out too late
    book.flush()
    positions.flush()
    if agency is not None:
        agency.flush()
    for exceeded in book.budgets.take_exceeded():  # `alert` budgets: delivered by the notification sweep
        outbox.enqueue(uow, tenant_id, "budget.exceeded", exceeded)
    _settle_events(uow, tenant_id, outcomes, (events[0].seq, events[-1].seq))
    if repriced:  # one UPDATE, joined to the new prices passed as arrays
        source, params = unnest_arrays(usage_event_items, repriced)
        assignments = ", ".join(f'"{name}" = rows."{name}"' for name in _REPRICED[2:])
        uow.connection.execute(text(
            f"UPDATE usage_event_items AS i SET {assignments} FROM {source} "
            "WHERE i.tenant_id = :tenant_id AND i.usage_event_id = rows.usage_event_id AND i.position = rows.position"
        ), {**params, "tenant_id": tenant_id})
    for event_id, multiplier in bursts.items():  # after repricing: the multiple of the items' final prices
        uow.connection.execute(text(
            "UPDATE usage_event_items SET cost = cost * :m, unit_price = unit_price * :m, "
            "pricing = coalesce(pricing, '{}'::jsonb) || jsonb_build_object('burstMultiplier', CAST(:shown AS text)) "
            "WHERE tenant_id = :tenant_id AND usage_event_id = :event_id"),
            {"m": multiplier, "shown": money.format_decimal(multiplier), "tenant_id": tenant_id, "event_id": event_id})
    return outcomes


def _price_flat(uow: UnitOfWork, tenant_id: str, agency_id: str, events: Sequence[Any],
                items: dict[uuid.UUID, list[Any]], catalog: Any) -> dict[uuid.UUID, tuple[list[Any], list[Any]]]:
    """A sub-account's events priced at both levels (resale, then the agency's price) when neither
    needs a month position (no graduated item at either level): the same prices the loop would give,
    whatever is charged before them. Events with a quote, a graduated item, or no price are left to
    the loop."""
    agency_catalog = CATALOG.for_tenant(uow, agency_id)
    found: dict[uuid.UUID, tuple[list[Any], list[Any]]] = {}
    for event in events:
        if event.quote_id is not None:
            continue
        try:
            resale = price_items(uow, tenant_id, items[event.id], event.occurred_at, catalog)
            if any(p.price.pricing_model == GRADUATED for p in resale):
                continue
            agency = price_items(uow, agency_id, items[event.id], event.created_at, agency_catalog)
            if any(p.price.pricing_model == GRADUATED for p in agency):
                continue
        except (PriceNotFound, ArithmeticError):
            continue  # the loop refuses it
        found[event.id] = (resale, agency)
    return found


# The group's items, event by event through the items' unique (tenant_id, usage_event_id, position) index:
# a key lookup per event whatever the statistics say. As `usage_event_id IN (...)`, a planner whose
# statistics predate a tenant's burst (it believes the tenant has a few rows) read the tenant's whole
# history through the index's tenant prefix and filtered it (issue 23; tests/integration/test_settle_plans.py).
# OFFSET 0 keeps the lateral subquery from being flattened into a join the planner could hash.
_ITEMS_BY_EVENT = text("""
    SELECT i.usage_event_id, i.position, i.category, i.provider, i.model, i.unit, i.quantity, i.unit_price, i.cost,
           i.price_id, i.unit_cost, i.provider_cost,
           -- what repricing compares and binding quotes advance by, without decoding the whole breakdown
           i.pricing ->> 'pricingModel' AS pricing_model, i.pricing ->> 'billedQuantity' AS billed_quantity,
           i.pricing ->> 'tierStart' AS tier_start
    FROM unnest(CAST(:ids AS uuid[])) AS k(id)
    CROSS JOIN LATERAL (
        SELECT * FROM usage_event_items
        WHERE tenant_id = :tenant_id AND usage_event_id = k.id
        OFFSET 0
    ) AS i
    ORDER BY i.usage_event_id, i.position
""").columns(usage_event_id=Uuid, quantity=Money, unit_price=Money, cost=Money, price_id=Uuid, unit_cost=Money,
             provider_cost=Money)

_REPRICED = ("usage_event_id", "position", "price_id", "unit_price", "cost", "pricing", "unit_cost", "provider_cost")


def _charge(book: WalletBook, event: Any, cost: Decimal, plan: CallPlan) -> None:
    """Debit one event's cost, settling its hold if it names one, or raise why it is refused.

    Under the plan's `grace` policy a hold's settlement (an admitted call) is charged in full — past
    the hold, the balance and a `reject` budget — into debt down to the plan's callGraceLimit (no
    limit when unset): the call happened. Under `strict`, and for charges without a hold, what does
    not fit is refused."""
    if book.blocked:
        raise WalletBlocked("the wallet is blocked; charges are refused", {"walletId": str(book.wallet.id)})
    hold = None
    if event.reservation_id is not None:
        hold = book.holds[event.reservation_id]
        check_settleable(hold, event.created_at)
    releasing = book.held_by(hold) if hold is not None else Decimal(0)
    in_full = hold is not None and plan.settles_in_full
    if not in_full:  # budgets count usage in the period it occurred in
        book.budgets.check(event.feature_key, event.occurred_at, cost, releasing)
    # the hold's own amount is released in the same entry, so it adds to what the charge may take
    may_take = money.add(book.spendable, releasing)
    if in_full and plan.call_grace_limit is not None:
        may_take = money.add(may_take, plan.call_grace_limit)
    if (not in_full or plan.call_grace_limit is not None) and cost > may_take:
        details = {"required": money.format_decimal(cost), "available": money.format_decimal(book.available)}
        if hold is not None:
            raise ReservationExceeded(
                "the cost exceeds the hold and the available balance cannot cover the rest",
                {**details, "reservationId": str(hold.id), "held": money.format_decimal(hold.amount),
                 **({"callGraceLimit": money.format_decimal(plan.call_grace_limit)}
                    if in_full and plan.call_grace_limit is not None else {})})
        raise InsufficientBalance("insufficient balance for this charge", details)
    entry = {"reference": event.external_reference_id, "description": f"{event.feature_key} usage",
             "idempotency_key": event.idempotency_key, "created_by": event.user_id}
    if in_full and cost > money.add(book.spendable, releasing):
        book.owe()
    if hold is not None:
        book.settle_hold(hold, cost, event.id, **entry)
    else:
        book.debit(cost, usage_event_id=event.id, **entry)
    book.budgets.spend(event.feature_key, event.occurred_at, cost)


def _charge_for_agency(book: WalletBook, event: Any, cost: Decimal) -> None:
    """An agency-funded sub-account's side of a charge: a zero debit keeps every charged event's one
    debit; a hold it names is settled (its reserved resale amount released, its settled amount the
    resale cost), the agency's hold backing it being settled at the agency's price (AgencyLevel.record)."""
    if book.blocked:
        raise WalletBlocked("the wallet is blocked; charges are refused", {"walletId": str(book.wallet.id)})
    entry = {"reference": event.external_reference_id, "description": f"{event.feature_key} usage (billed by the agency)",
             "idempotency_key": event.idempotency_key, "created_by": event.user_id}
    if event.reservation_id is None:
        book.budgets.check(event.feature_key, event.occurred_at, cost, Decimal(0))  # its budgets: at resale
        book.debit(Decimal(0), usage_event_id=event.id, **entry)
    else:
        hold = book.holds[event.reservation_id]
        check_settleable(hold, event.created_at)
        book.settle_hold(hold, Decimal(0), event.id, **entry)
        hold.settled_amount = cost
    book.budgets.spend(event.feature_key, event.occurred_at, cost)


def _settle_events(uow: UnitOfWork, tenant_id: str, outcomes: list[SettleOutcome], seqs: tuple[int, int]) -> None:
    """One UPDATE for the whole group, joined to the outcomes passed as arrays; the transaction's time is a
    parameter (no now() inside CASE on a distributed table: Citus).

    The group's events are still pending (claimed FOR UPDATE in this transaction) and lie in the claim's
    `seq` range, so the UPDATE names both: the planner finds them through the pending index's (tenant_id,
    seq) range or by primary key, never by scanning the tenant's history, whatever its statistics say
    (issue 23: with statistics older than a tenant's burst it hashed the whole tenant through
    usage_events_tenant_time). Every event must be updated exactly once, or the group rolls back."""
    source, params = unnest_arrays(usage_events, [
        {"id": o.event_id, "status": o.status, "total_cost": o.total_cost, "rejection_code": o.code,
         "rejection_reason": o.reason, "rejection_details": o.details}
        for o in outcomes
    ])
    updated = uow.connection.execute(text(f"""
        UPDATE usage_events AS e SET
            status = rows.status,
            total_cost = coalesce(rows.total_cost, e.total_cost),
            charged_at = CASE WHEN rows.status = 'charged' THEN CAST(:now AS timestamptz) END,
            rejection_code = rows.rejection_code,
            rejection_reason = rows.rejection_reason,
            rejection_details = rows.rejection_details
        FROM {source}
        WHERE e.tenant_id = :tenant_id AND e.id = rows.id
          AND e.status = 'pending' AND e.seq BETWEEN :first_seq AND :last_seq
    """), {**params, "tenant_id": tenant_id, "now": uow.now(), "first_seq": min(seqs), "last_seq": max(seqs)})
    if updated.rowcount != len(outcomes):
        raise RuntimeError(f"settled {updated.rowcount} of a group of {len(outcomes)} claimed events")
