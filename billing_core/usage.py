"""Usage events: accepted as pending, then charged (or rejected) exactly once by a worker."""
from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert

from . import idempotency, money
from .commands import ChargeRequest, fingerprint_body
from .db import UnitOfWork
from .errors import BillingError, InsufficientBalance, NotFound, PriceNotFound, ValidationFailed, WalletBlocked
from .pricing import CURRENCY, price_items
from .tables import usage_event_items, usage_events
from .wallets import LedgerEntry, append_entry, debit_for_event, get_wallet

PENDING, CHARGED, REJECTED = "pending", "charged", "rejected"


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


@dataclass(frozen=True)
class ChargeOutcome:
    """A usage event as it stands, with its debit once charged."""
    event: UsageEvent
    debit: LedgerEntry | None = None
    items: list[UsageItemRecord] = field(default_factory=list)
    replayed: bool = False


def _event(row: Any) -> UsageEvent:
    return UsageEvent(**row._mapping)


def accept_charge(uow: UnitOfWork, tenant_id: str, command: ChargeRequest, *, user_id: str | None) -> ChargeOutcome:
    """Record a charge as a pending usage event and commit, so it is durable before anyone is told.

    The same idempotency key with the same request returns the earlier event (replayed); with a
    different request it raises IdempotencyConflict. An item without a price raises PriceNotFound
    and nothing is written. Enqueueing the charge is the caller's job, after this commit.
    """
    key = command.idempotencyKey or f"auto:{uuid.uuid4()}"
    event_id = uuid.uuid4()
    earlier = idempotency.claim(
        uow, tenant_id, key, "charge", idempotency.fingerprint("charge", fingerprint_body(command)),
        usage_event_id=event_id,
    )
    if earlier is not None:
        assert earlier.usage_event_id is not None
        return _replace_replayed(load_outcome(uow, tenant_id, earlier.usage_event_id))
    accepted_at = uow.now()
    priced = price_items(uow, tenant_id, command.items, accepted_at)
    uow.connection.execute(
        insert(usage_events).values(
            id=event_id, tenant_id=tenant_id, task_id=uuid.uuid4(), feature_key=command.featureKey,
            external_reference_id=command.externalReferenceId, idempotency_key=key, user_id=user_id,
            status=PENDING, total_cost=money.total(p.cost for p in priced), currency=CURRENCY,
            metadata=command.metadata, created_at=accepted_at, enqueued_at=accepted_at, enqueue_count=1,
        )
    )
    uow.connection.execute(
        insert(usage_event_items),
        [
            {"id": uuid.uuid4(), "tenant_id": tenant_id, "usage_event_id": event_id, "position": index,
             "category": p.item.category, "provider": p.item.provider, "model": p.item.model,
             "unit": p.item.unit, "quantity": p.item.quantity, "unit_price": p.price.unit_price,
             "cost": p.cost, "price_id": p.price.id}
            for index, p in enumerate(priced)
        ],
    )
    uow.commit()
    return load_outcome(uow, tenant_id, event_id)


def _replace_replayed(outcome: ChargeOutcome) -> ChargeOutcome:
    return ChargeOutcome(outcome.event, outcome.debit, outcome.items, replayed=True)


def charge_usage_event(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID) -> ChargeOutcome:
    """Charge a pending usage event and commit: price it at the event's time, lock the wallet,
    debit it if `available + overdraft >= cost`, else reject the event with nothing in the ledger.

    Invariant: runs at most once per event. The event row is locked first and only a `pending`
    event is acted on, so a duplicate delivery finds it settled and changes nothing; the ledger's
    unique (tenant, usage event) debit index stops a double debit even if that ever failed.
    """
    row = uow.connection.execute(
        select(usage_events)
        .where(usage_events.c.tenant_id == tenant_id, usage_events.c.id == usage_event_id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise NotFound(f"usage event {usage_event_id} not found")
    event = _event(row)
    if event.status != PENDING:
        uow.rollback()
        return load_outcome(uow, tenant_id, usage_event_id)

    items = load_items(uow, tenant_id, usage_event_id)
    try:
        priced = price_items(uow, tenant_id, items, event.created_at)
        cost = money.total(p.cost for p in priced)
        wallet = get_wallet(uow, tenant_id, lock=True)
        if wallet.status != "active":
            raise WalletBlocked("the wallet is blocked; charges are refused", {"walletId": str(wallet.id)})
        if not wallet.can_spend(cost):
            raise InsufficientBalance(
                "insufficient balance for this charge",
                {"required": money.format_decimal(cost),
                 "available": money.format_decimal(wallet.available_balance)},
            )
    except (PriceNotFound, InsufficientBalance, WalletBlocked) as refusal:
        _reject(uow, tenant_id, usage_event_id, refusal)
        uow.commit()
        return load_outcome(uow, tenant_id, usage_event_id)

    append_entry(
        uow, wallet, entry_type="debit", amount=-cost, usage_event_id=usage_event_id,
        reference=event.external_reference_id, description=f"{event.feature_key} usage",
        idempotency_key=event.idempotency_key, created_by=event.user_id,
    )
    for index, p in enumerate(priced):
        uow.connection.execute(
            update(usage_event_items)
            .where(usage_event_items.c.tenant_id == tenant_id,
                   usage_event_items.c.usage_event_id == usage_event_id,
                   usage_event_items.c.position == index)
            .values(unit_price=p.price.unit_price, cost=p.cost, price_id=p.price.id)
        )
    uow.connection.execute(
        update(usage_events)
        .where(usage_events.c.tenant_id == tenant_id, usage_events.c.id == usage_event_id)
        .values(status=CHARGED, total_cost=cost, charged_at=func.now())
    )
    uow.commit()
    return load_outcome(uow, tenant_id, usage_event_id)


def _reject(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID, refusal: BillingError) -> None:
    uow.connection.execute(
        update(usage_events)
        .where(usage_events.c.tenant_id == tenant_id, usage_events.c.id == usage_event_id)
        .values(status=REJECTED, rejection_code=refusal.code, rejection_reason=refusal.message,
                rejection_details=refusal.details)
    )


def load_items(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID) -> list[UsageItemRecord]:
    rows = uow.connection.execute(
        select(usage_event_items.c.position, usage_event_items.c.category, usage_event_items.c.provider,
               usage_event_items.c.model, usage_event_items.c.unit, usage_event_items.c.quantity,
               usage_event_items.c.unit_price, usage_event_items.c.cost)
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
    event = _event(row)
    debit = debit_for_event(uow, tenant_id, event.id) if event.status == CHARGED else None
    items = load_items(uow, tenant_id, event.id) if with_items else []
    return ChargeOutcome(event, debit, items)


def find_by_task(uow: UnitOfWork, tenant_id: str, task_id: uuid.UUID) -> ChargeOutcome:
    event_id = uow.connection.execute(
        select(usage_events.c.id).where(usage_events.c.tenant_id == tenant_id, usage_events.c.task_id == task_id)
    ).scalar_one_or_none()
    if event_id is None:
        raise NotFound(f"task {task_id} not found")
    return load_outcome(uow, tenant_id, event_id)


@dataclass(frozen=True)
class StalePending:
    tenant_id: str
    usage_event_id: uuid.UUID
    task_id: uuid.UUID
    enqueue_count: int


def claim_stale_pending(uow: UnitOfWork, older_than_seconds: float, limit: int = 1000) -> list[StalePending]:
    """Mark pending events whose last enqueue is older than their retry age as enqueued now, and
    return them for enqueueing again (their message was lost, or their worker died).

    The retry age doubles with each enqueue (capped at 64×), so a backlog the workers are still
    working through is not flooded with duplicates. This is the one deliberately cross-tenant query:
    a housekeeping scan over the pending index. SKIP LOCKED leaves events a worker is charging now,
    and concurrent sweeps never claim the same event twice.
    """
    backoff = func.power(2, func.least(usage_events.c.enqueue_count - 1, 6))
    stale = (
        select(usage_events.c.id)
        .where(usage_events.c.status == PENDING,
               usage_events.c.enqueued_at
               < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_seconds * backoff))
        .order_by(usage_events.c.enqueued_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = uow.connection.execute(
        update(usage_events)
        .where(usage_events.c.id.in_(stale), usage_events.c.status == PENDING)
        .values(enqueued_at=func.now(), enqueue_count=usage_events.c.enqueue_count + 1)
        .returning(usage_events.c.tenant_id, usage_events.c.id, usage_events.c.task_id, usage_events.c.enqueue_count)
    ).all()
    uow.commit()
    return [StalePending(r.tenant_id, r.id, r.task_id, r.enqueue_count) for r in rows]


# --- history -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class UsageFilter:
    start: datetime | None = None
    end: datetime | None = None  # exclusive
    feature_key: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class Summary:
    total_events: int
    total_cost: Decimal  # charged events only
    by_feature: dict[str, tuple[int, Decimal]]
    by_status: dict[str, tuple[int, Decimal]]


def _conditions(tenant_id: str, filters: UsageFilter) -> list:
    conditions = [usage_events.c.tenant_id == tenant_id]
    if filters.start is not None:
        conditions.append(usage_events.c.created_at >= filters.start)
    if filters.end is not None:
        conditions.append(usage_events.c.created_at < filters.end)
    if filters.feature_key is not None:
        conditions.append(usage_events.c.feature_key == filters.feature_key)
    if filters.status is not None:
        conditions.append(usage_events.c.status == filters.status)
    return conditions


def encode_cursor(created_at: datetime, event_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(event_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, event_id = json.loads(raw)
        if not (isinstance(created_at, str) and isinstance(event_id, str)):
            raise ValueError("cursor fields are not strings")
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError("cursor time has no offset")
        return moment.astimezone(timezone.utc), uuid.UUID(event_id)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValidationFailed("cursor", "not a cursor this service issued") from exc


def list_usage_events(uow: UnitOfWork, tenant_id: str, filters: UsageFilter, *, limit: int,
                      cursor: str | None = None) -> tuple[list[UsageEvent], str | None]:
    """One page of events, newest first, and the cursor of the next page (None on the last)."""
    query = select(usage_events).where(*_conditions(tenant_id, filters))
    if cursor:
        created_at, event_id = decode_cursor(cursor)
        query = query.where(or_(usage_events.c.created_at < created_at,
                                and_(usage_events.c.created_at == created_at, usage_events.c.id < event_id)))
    rows = uow.connection.execute(
        query.order_by(usage_events.c.created_at.desc(), usage_events.c.id.desc()).limit(limit + 1)
    ).all()
    events = [_event(r) for r in rows[:limit]]
    next_cursor = encode_cursor(events[-1].created_at, events[-1].id) if len(rows) > limit else None
    return events, next_cursor


def summarize_usage(uow: UnitOfWork, tenant_id: str, filters: UsageFilter) -> Summary:
    """Counts and costs over the whole filtered range (not a page), by feature and by status."""
    rows = uow.connection.execute(
        select(usage_events.c.feature_key, usage_events.c.status, func.count(),
               func.coalesce(func.sum(usage_events.c.total_cost), 0))
        .where(*_conditions(tenant_id, filters))
        .group_by(usage_events.c.feature_key, usage_events.c.status)
    ).all()
    by_feature: dict[str, tuple[int, Decimal]] = {}
    by_status: dict[str, tuple[int, Decimal]] = {}
    for feature_key, status, count, cost in rows:
        # a feature's cost is what it was billed; pending and rejected costs show under by_status
        billed = cost if status == CHARGED else Decimal(0)
        for bucket, name, amount in ((by_feature, feature_key, billed), (by_status, status, cost)):
            events, total_cost = bucket.get(name, (0, Decimal(0)))
            bucket[name] = (events + count, money.add(total_cost, amount))
    return Summary(
        total_events=sum(count for count, _ in by_status.values()),
        # what was billed: charged events only; pending and rejected costs show under by_status
        total_cost=by_status.get(CHARGED, (0, Decimal(0)))[1],
        by_feature=by_feature,
        by_status=by_status,
    )
