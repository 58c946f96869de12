"""Usage events: accepted as pending, then charged (or rejected) exactly once by a worker."""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from billing_core import idempotency, money
from billing_core.catalog import CURRENCY, PricedItem, TenantPrices, TierPositions, clock_and_catalog, price_items
from billing_core.db import UnitOfWork, cached_text, unnest_columns
from billing_core.errors import BillingError, NotFound, ValidationFailed
from billing_core.idempotency import idempotency_records
from billing_core.ledger.book import check_settleable
from billing_core.ledger.model import Hold, LedgerEntry, UsageEventStatus
from billing_core.ledger.wallets import debit_for_event
from billing_core.lifecycle.holds import load_holds
from billing_core.lifecycle.quotes import QuotedPrices, binding_prices, load_quotes
from billing_core.usage.commands import ChargeRequest, fingerprint_body
from billing_core.usage.tables import usage_event_items, usage_events


@dataclass(frozen=True)
class UsageItemRecord:
    position: int
    category: str
    provider: str
    model: str
    unit: str
    quantity: Decimal
    unit_price: Decimal | None
    cost: Decimal | None
    price_id: uuid.UUID | None = None
    pricing: dict[str, Any] | None = None  # how it was priced, when more than quantity x unit price
    unit_cost: Decimal | None = None  # the provider's; None: uncosted
    provider_cost: Decimal | None = None


@dataclass(frozen=True)
class UsageEvent:
    id: uuid.UUID
    tenant_id: str
    task_id: uuid.UUID
    feature_key: str
    external_reference_id: str | None
    idempotency_key: str
    user_id: str | None
    status: str
    total_cost: Decimal | None
    currency: str
    rejection_code: str | None
    rejection_reason: str | None
    rejection_details: dict[str, Any] | None
    metadata: dict[str, Any]
    created_at: datetime
    charged_at: datetime | None
    enqueued_at: datetime
    enqueue_count: int
    seq: int | None = None  # assigned by the database on insert: arrival order
    reservation_id: uuid.UUID | None = None  # the hold this charge settles
    quote_id: uuid.UUID | None = None  # the binding quote that prices it
    request_id: str | None = None  # the HTTP request that accepted it
    # when the usage happened (a late record's occurredAt, else its acceptance): the time it is priced,
    # budgeted and invoiced at
    occurred_at: datetime | None = None

    @property
    def occurred(self) -> datetime:
        return self.occurred_at or self.created_at


@dataclass(frozen=True)
class ChargeOutcome:
    """A usage event as it stands, with its debit once charged."""
    event: UsageEvent
    debit: LedgerEntry | None = None
    items: list[UsageItemRecord] = field(default_factory=list)
    replayed: bool = False


def event_from_row(row: Any) -> UsageEvent:
    return UsageEvent(**row._mapping)


@dataclass(frozen=True)
class Acceptance:
    """What became of one charge of a submission: accepted (a new pending event), replayed (the
    event an earlier request with the same key made), or refused with an error."""
    event: UsageEvent | None
    replayed: bool = False
    error: BillingError | None = None


@dataclass
class _Candidate:
    index: int
    key: str
    fingerprint: str
    command: ChargeRequest
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    priced: list[PricedItem] = field(default_factory=list)
    quote_id: uuid.UUID | None = None  # the binding quote that prices it: named, or its hold's
    occurred_at: datetime | None = None  # when the usage happened: the time it is priced at


LATE_USAGE_MAX_DAYS = 35
# a record stamped by a clock a little ahead of the database's is not "in the future"
OCCURRED_AT_SKEW = timedelta(minutes=5)


def occurrence(command: ChargeRequest, accepted_at: datetime, max_days: int) -> datetime:
    """When the charge's usage happened: its occurredAt (not beyond the clock skew ahead of the
    acceptance, not older than `max_days`), else its acceptance. A ValidationFailed names occurredAt."""
    at = command.occurredAt
    if at is None:
        return accepted_at
    if at > accepted_at + OCCURRED_AT_SKEW:
        raise ValidationFailed("occurredAt", "must not be in the future")
    if at < accepted_at - timedelta(days=max_days):
        raise ValidationFailed("occurredAt", f"must be within the last {max_days} days (LATE_USAGE_MAX_DAYS)")
    return min(at, accepted_at)


def accept_charges(uow: UnitOfWork, tenant_id: str, commands: Sequence[ChargeRequest | BillingError], *,
                   user_id: str | None, request_id: str | None = None,
                   late_usage_max_days: int = LATE_USAGE_MAX_DAYS) -> list[Acceptance]:
    """Record many charges as pending usage events in one transaction and commit, so each accepted
    one is durable before anyone is told. Each keeps its own idempotency key and outcome: a key used
    before with the same request is replayed, with another request it is an IdempotencyConflict, an
    item without a price is a PriceNotFound, and a refused charge writes nothing. A BillingError in
    `commands` (a request that failed validation) is passed through as that charge's outcome.
    Enqueueing the charges is the caller's job, after this commit. A late record (occurredAt) is
    priced at its occurrence: the catalog, override, multiplier and tier position of that moment.
    """
    results: list[Acceptance | None] = [None] * len(commands)
    first_by_key: dict[str, _Candidate] = {}
    repeats: list[_Candidate] = []
    for index, command in enumerate(commands):
        if isinstance(command, BillingError):
            results[index] = Acceptance(None, error=command)
            continue
        key = command.idempotencyKey or f"auto:{uuid.uuid4()}"
        candidate = _Candidate(index, key, idempotency.fingerprint("charge", fingerprint_body(command)), command)
        if key in first_by_key:
            repeats.append(candidate)
        else:
            first_by_key[key] = candidate

    accepted_at, catalog = clock_and_catalog(uow, tenant_id)
    commands_in_play = [c.command for c in first_by_key.values()]
    found_holds = load_holds(uow, tenant_id, [c.reservationId for c in commands_in_play if c.reservationId])
    found_quotes = load_quotes(uow, tenant_id, [*(c.quoteId for c in commands_in_play if c.quoteId),
                                                *(h.quote_id for h in found_holds.values() if h.quote_id)])
    fresh: list[_Candidate] = []
    unpriced: dict[int, BillingError] = {}
    # graduated items are estimated from the committed tier positions (read once for the submission);
    # the charging worker prices them again where the month stands under the wallet lock
    estimate = TierPositions(uow, tenant_id, locked=False)
    for candidate in first_by_key.values():
        command = candidate.command
        prices: TenantPrices | QuotedPrices
        try:
            candidate.quote_id = command.quoteId
            candidate.occurred_at = occurrence(command, accepted_at, late_usage_max_days)
            if command.reservationId is not None:
                hold = _check_hold(found_holds, command, accepted_at)
                if candidate.quote_id is None and hold.quote_id is not None:
                    # a hold made from a quote is settled at the quote's prices, however long it ran
                    candidate.quote_id = hold.quote_id
                    prices = QuotedPrices(found_quotes[hold.quote_id], catalog)
            if candidate.quote_id is None:
                prices = catalog
            elif candidate.quote_id == command.quoteId:
                prices = binding_prices(found_quotes, command.quoteId, accepted_at, catalog)
            candidate.priced = price_items(uow, tenant_id, command.items, candidate.occurred_at, prices, estimate,
                                           catalog)
            fresh.append(candidate)
        except BillingError as refusal:
            unpriced[candidate.index] = refusal
    events = _events_as_written(tenant_id, fresh, accepted_at, user_id, request_id)
    claimed = _claim_and_insert(uow, tenant_id, fresh, events)
    uow.commit()

    # keys this submission did not get: used before, or by a concurrent request that committed first
    others = [c for c in first_by_key.values() if c.key not in claimed]
    earlier = idempotency.find(uow, tenant_id, [c.key for c in others])
    replays: dict[int, uuid.UUID] = {}
    for candidate in others:
        try:
            if candidate.key in earlier:
                replays[candidate.index] = idempotency.replayable(earlier[candidate.key], "charge",
                                                                  candidate.fingerprint)
            else:
                raise unpriced[candidate.index]
        except BillingError as refusal:
            results[candidate.index] = Acceptance(None, error=refusal)
    replayed_events = load_events(uow, tenant_id, list(replays.values()))
    for candidate in fresh:
        if candidate.key in claimed:
            results[candidate.index] = Acceptance(events[candidate.event_id])
    for index, event_id in replays.items():
        results[index] = Acceptance(replayed_events[event_id], replayed=True)
    for repeat in repeats:  # the same key twice in one submission: the second is a replay of the first
        first = results[first_by_key[repeat.key].index]
        assert first is not None
        if repeat.fingerprint != first_by_key[repeat.key].fingerprint:
            results[repeat.index] = Acceptance(None, error=idempotency.conflict(repeat.key))
        else:
            results[repeat.index] = Acceptance(first.event, replayed=first.event is not None, error=first.error)
    return [r for r in results if r is not None]


def _check_hold(found: dict[uuid.UUID, Hold], command: ChargeRequest, at: datetime) -> Hold:
    """Refuse at once a charge whose hold cannot be settled; the worker checks again when it settles."""
    hold = found.get(command.reservationId)  # type: ignore[arg-type]
    if hold is None:
        raise NotFound(f"reservation {command.reservationId} not found", {"field": "reservationId"})
    if hold.feature_key != command.featureKey:
        raise ValidationFailed("featureKey", f"must be the reservation's featureKey ({hold.feature_key})")
    check_settleable(hold, at)
    return hold


def _events_as_written(tenant_id: str, fresh: list[_Candidate], accepted_at: datetime,
                       user_id: str | None, request_id: str | None) -> dict[uuid.UUID, UsageEvent]:
    """The events about to be inserted, pending: once committed a worker may already be charging
    them, and their acceptance is what the caller answers."""
    return {
        c.event_id: UsageEvent(
            id=c.event_id, tenant_id=tenant_id, task_id=uuid.uuid4(), feature_key=c.command.featureKey,
            external_reference_id=c.command.externalReferenceId, idempotency_key=c.key, user_id=user_id,
            status=UsageEventStatus.PENDING, total_cost=money.total(p.cost for p in c.priced), currency=CURRENCY,
            rejection_code=None, rejection_reason=None, rejection_details=None, metadata=c.command.metadata,
            created_at=accepted_at, charged_at=None, enqueued_at=accepted_at, enqueue_count=1,
            reservation_id=c.command.reservationId, quote_id=c.quote_id, request_id=request_id,
            occurred_at=c.occurred_at or accepted_at,
        )
        for c in fresh
    }


_EVENT_COLUMNS = [f.name for f in fields(UsageEvent) if f.name != "seq"]  # seq: the database's identity


def _claim_and_insert(uow: UnitOfWork, tenant_id: str, fresh: list[_Candidate],
                      events: dict[uuid.UUID, UsageEvent]) -> set[str]:
    """One statement: claim the idempotency keys (in key order, so overlapping submissions cannot
    deadlock; a key held by a concurrent transaction waits for it), and insert the events and items
    of the keys this transaction got. Returns those keys.

    The arrays are built column by column (no dict per row), and the statement's text, which depends
    only on the columns, is built once (cached_text): with a batch of 1,000 both were a visible share
    of a web worker's CPU (bench/PROFILE.md)."""
    if not fresh:
        return set()
    count = len(fresh)
    claims, claim_params = unnest_columns(idempotency_records, {
        "tenant_id": [tenant_id] * count, "idempotency_key": [c.key for c in fresh],
        "operation": ["charge"] * count, "request_fingerprint": [c.fingerprint for c in fresh],
        "usage_event_id": [c.event_id for c in fresh]}, alias="claim")
    written = list(events.values())
    rows, event_params = unnest_columns(usage_events, {
        name: [getattr(e, name) for e in written] for name in _EVENT_COLUMNS}, alias="event")
    priced = [(c.event_id, position, p) for c in fresh for position, p in enumerate(c.priced)]
    item_rows: dict[str, list[Any]] = {
        "id": [uuid.uuid4() for _ in priced], "tenant_id": [tenant_id] * len(priced),
        "usage_event_id": [event_id for event_id, _, _ in priced], "position": [position for _, position, _ in priced],
        "category": [p.item.category for _, _, p in priced], "provider": [p.item.provider for _, _, p in priced],
        "model": [p.item.model for _, _, p in priced], "unit": [p.item.unit for _, _, p in priced],
        "quantity": [p.item.quantity for _, _, p in priced], "unit_price": [p.price.unit_price for _, _, p in priced],
        "cost": [p.cost for _, _, p in priced], "price_id": [p.price.id for _, _, p in priced],
        "pricing": [p.breakdown() for _, _, p in priced], "unit_cost": [p.unit_cost for _, _, p in priced],
        "provider_cost": [p.provider_cost for _, _, p in priced]}
    lines, item_params = unnest_columns(usage_event_items, item_rows, alias="item")
    item_columns = ", ".join(f'"{name}"' for name in item_rows)
    claimed = uow.connection.execute(cached_text(f"""
        WITH claimed AS (
            INSERT INTO idempotency_records (tenant_id, idempotency_key, operation, request_fingerprint, usage_event_id)
            SELECT claim.tenant_id, claim.idempotency_key, claim.operation, claim.request_fingerprint,
                   claim.usage_event_id
            FROM {claims} ORDER BY claim.idempotency_key
            ON CONFLICT DO NOTHING
            RETURNING idempotency_key, usage_event_id
        ), new_events AS (
            INSERT INTO usage_events ({", ".join(f'"{name}"' for name in _EVENT_COLUMNS)})
            SELECT {", ".join(f'event."{name}"' for name in _EVENT_COLUMNS)}
            FROM {rows} JOIN claimed ON claimed.usage_event_id = event.id
            ORDER BY event.ordinality  -- seq follows the order of the submission
        ), new_items AS (
            INSERT INTO usage_event_items ({item_columns})
            SELECT {", ".join(f'item."{name}"' for name in item_rows)}
            FROM {lines} JOIN claimed ON claimed.usage_event_id = item.usage_event_id
        )
        SELECT idempotency_key FROM claimed
    """), {**claim_params, **event_params, **item_params}).scalars()
    return set(claimed)


def accept_charge(uow: UnitOfWork, tenant_id: str, command: ChargeRequest, *, user_id: str | None,
                  request_id: str | None = None, late_usage_max_days: int = LATE_USAGE_MAX_DAYS) -> ChargeOutcome:
    """Record one charge as a pending usage event (see accept_charges); its refusal is raised."""
    acceptance = accept_charges(uow, tenant_id, [command], user_id=user_id, request_id=request_id,
                                late_usage_max_days=late_usage_max_days)[0]
    if acceptance.error is not None:
        raise acceptance.error
    assert acceptance.event is not None
    outcome = load_outcome(uow, tenant_id, acceptance.event.id) if acceptance.replayed else ChargeOutcome(acceptance.event)
    return ChargeOutcome(outcome.event, outcome.debit, replayed=acceptance.replayed)


def load_events(uow: UnitOfWork, tenant_id: str, event_ids: list[uuid.UUID]) -> dict[uuid.UUID, UsageEvent]:
    if not event_ids:
        return {}
    rows = uow.connection.execute(
        select(usage_events).where(usage_events.c.tenant_id == tenant_id, usage_events.c.id.in_(event_ids))
    )
    return {row.id: event_from_row(row) for row in rows}


def load_items(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID) -> list[UsageItemRecord]:
    rows = uow.connection.execute(
        select(usage_event_items.c.position, usage_event_items.c.category, usage_event_items.c.provider,
               usage_event_items.c.model, usage_event_items.c.unit, usage_event_items.c.quantity,
               usage_event_items.c.unit_price, usage_event_items.c.cost, usage_event_items.c.price_id,
               usage_event_items.c.pricing, usage_event_items.c.unit_cost, usage_event_items.c.provider_cost)
        .where(usage_event_items.c.tenant_id == tenant_id, usage_event_items.c.usage_event_id == usage_event_id)
        .order_by(usage_event_items.c.position)
    )
    return [UsageItemRecord(**row._mapping) for row in rows]


def load_outcome(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID, *, with_items: bool = False) -> ChargeOutcome:
    row = uow.connection.execute(
        select(usage_events).where(usage_events.c.tenant_id == tenant_id, usage_events.c.id == usage_event_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"usage event {usage_event_id} not found")
    event = event_from_row(row)
    debit = debit_for_event(uow, tenant_id, event.id) if event.status == UsageEventStatus.CHARGED else None
    items = load_items(uow, tenant_id, event.id) if with_items else []
    return ChargeOutcome(event, debit, items)


def find_by_task(uow: UnitOfWork, tenant_id: str, task_id: uuid.UUID) -> ChargeOutcome:
    event_id = uow.connection.execute(
        select(usage_events.c.id).where(usage_events.c.tenant_id == tenant_id, usage_events.c.task_id == task_id)
    ).scalar_one_or_none()
    if event_id is None:
        raise NotFound(f"task {task_id} not found")
    return load_outcome(uow, tenant_id, event_id)
