"""Charging pending usage events: one at a time (the naive mode, kept for comparison) or a wallet's
pending events in groups, each group in one transaction (group commit, the default)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, select, text, update

from . import money
from .db import UnitOfWork, insert_rows, unnest_arrays
from .errors import BillingError, InsufficientBalance, NotFound, PriceNotFound, WalletBlocked
from .pricing import CATALOG, price_items
from .tables import ledger_entries, usage_event_items, usage_events, wallets
from .usage import (
    CHARGED,
    PENDING,
    REJECTED,
    ChargeOutcome,
    UsageItemRecord,
    event_from_row,
    load_items,
    load_outcome,
)
from .wallets import Wallet, append_entry, get_wallet


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
    event = event_from_row(row)
    if event.status != PENDING:
        uow.rollback()
        return load_outcome(uow, tenant_id, usage_event_id)

    items = load_items(uow, tenant_id, usage_event_id)
    try:
        priced = price_items(uow, tenant_id, items, event.created_at)
        cost = money.total(p.cost for p in priced)
        wallet = get_wallet(uow, tenant_id, lock=True)
        _check_spendable(wallet, wallet.spendable, cost)
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




@dataclass(frozen=True)
class Settled:
    usage_event_id: uuid.UUID
    status: str


def charge_pending_batch(uow: UnitOfWork, tenant_id: str, limit: int) -> list[Settled]:
    """Group commit: claim up to `limit` of the tenant's pending events in event order, price them,
    and settle them all in this one transaction, then commit.

    One wallet lock, one multi-row insert of debit entries whose balance_before/balance_after form
    an unbroken chain in event order, one balance update, one update of the events. Each event is
    charged or rejected on its own merits: after a charge that does not fit, a cheaper one still may.
    Invariant: the wallet is locked before any event is claimed, so a wallet's groups are settled one
    after another in arrival order; FOR UPDATE SKIP LOCKED means no two claims share an event; only
    `pending` events are claimed, so each is settled exactly once (the ledger's one-debit-per-event
    index stands behind that).
    """
    # The wallet first: a second worker on this wallet waits here and then claims the next events,
    # so a wallet's events are settled in arrival order even across workers.
    wallet = get_wallet(uow, tenant_id, lock=True)
    events = uow.connection.execute(
        select(usage_events.c.id, usage_events.c.created_at, usage_events.c.feature_key,
               usage_events.c.external_reference_id, usage_events.c.idempotency_key, usage_events.c.user_id)
        .where(usage_events.c.tenant_id == tenant_id, usage_events.c.status == PENDING)
        .order_by(usage_events.c.seq)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not events:
        uow.rollback()
        return []
    items: dict[uuid.UUID, list[UsageItemRecord]] = {e.id: [] for e in events}
    for row in uow.connection.execute(
        select(usage_event_items.c.usage_event_id, usage_event_items.c.position, usage_event_items.c.category,
               usage_event_items.c.provider, usage_event_items.c.model, usage_event_items.c.unit,
               usage_event_items.c.quantity, usage_event_items.c.unit_price, usage_event_items.c.cost,
               usage_event_items.c.price_id)
        .where(usage_event_items.c.tenant_id == tenant_id, usage_event_items.c.usage_event_id.in_(list(items)))
        .order_by(usage_event_items.c.usage_event_id, usage_event_items.c.position)
    ):
        event_id, *fields = row
        items[event_id].append(UsageItemRecord(*fields))

    catalog = CATALOG.for_tenant(uow, tenant_id)
    balance, spendable = wallet.current_balance, wallet.spendable
    debits: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    repriced: list[dict[str, Any]] = []
    for event in events:
        try:
            priced = price_items(uow, tenant_id, items[event.id], event.created_at, catalog)
            cost = money.total(p.cost for p in priced)
            _check_spendable(wallet, spendable, cost)
        except (PriceNotFound, InsufficientBalance, WalletBlocked) as refusal:
            outcomes.append({"event_id": event.id, "status": REJECTED, "total_cost": None, "code": refusal.code,
                             "reason": refusal.message, "details": refusal.details})
            continue
        except ArithmeticError as exc:  # a cost no exact context can hold: refuse this event, not the group
            outcomes.append({"event_id": event.id, "status": REJECTED, "total_cost": None, "code": "pricing_error",
                             "reason": f"the cost cannot be computed exactly: {type(exc).__name__}", "details": {}})
            continue
        after = money.subtract(balance, cost)
        debits.append({"id": uuid.uuid4(), "tenant_id": tenant_id, "wallet_id": wallet.id, "entry_type": "debit",
                       "amount": -cost, "balance_before": balance, "balance_after": after,
                       "usage_event_id": event.id, "reference": event.external_reference_id,
                       "description": f"{event.feature_key} usage", "idempotency_key": event.idempotency_key,
                       "created_by": event.user_id})
        balance, spendable = after, money.subtract(spendable, cost)
        outcomes.append({"event_id": event.id, "status": CHARGED, "total_cost": cost, "code": None,
                         "reason": None, "details": None})
        # items were priced at acceptance, which is the event's time; rewrite only what differs
        repriced += [{"event_id": event.id, "position": i, "unit_price": p.price.unit_price, "cost": p.cost,
                      "price_id": p.price.id}
                     for i, (p, stored) in enumerate(zip(priced, items[event.id], strict=True))
                     if (p.price.id, p.price.unit_price, p.cost) != (stored.price_id, stored.unit_price, stored.cost)]

    if debits:
        insert_rows(uow, ledger_entries, debits)
        uow.connection.execute(
            update(wallets).where(wallets.c.tenant_id == tenant_id, wallets.c.id == wallet.id)
            .values(current_balance=balance, updated_at=func.now())
        )
    _settle_events(uow, tenant_id, outcomes)
    if repriced:
        uow.connection.execute(
            update(usage_event_items)
            .where(usage_event_items.c.tenant_id == tenant_id,
                   usage_event_items.c.usage_event_id == bindparam("event_id"),
                   usage_event_items.c.position == bindparam("position"))
            .values(unit_price=bindparam("unit_price"), cost=bindparam("cost"), price_id=bindparam("price_id")),
            repriced,
        )
    uow.commit()
    return [Settled(o["event_id"], o["status"]) for o in outcomes]


def _check_spendable(wallet: Wallet, spendable: Decimal, cost: Decimal) -> None:
    if wallet.status != "active":
        raise WalletBlocked("the wallet is blocked; charges are refused", {"walletId": str(wallet.id)})
    if spendable < cost:
        raise InsufficientBalance(
            "insufficient balance for this charge",
            {"required": money.format_decimal(cost),
             "available": money.format_decimal(money.subtract(spendable, wallet.overdraft_limit))},
        )


def _settle_events(uow: UnitOfWork, tenant_id: str, outcomes: list[dict[str, Any]]) -> None:
    """One UPDATE for the whole group, joined to the outcomes passed as arrays."""
    source, params = unnest_arrays(usage_events, [
        {"id": o["event_id"], "status": o["status"], "total_cost": o["total_cost"], "rejection_code": o["code"],
         "rejection_reason": o["reason"], "rejection_details": o["details"]}
        for o in outcomes
    ])
    uow.connection.execute(text(f"""
        UPDATE usage_events AS e SET
            status = rows.status,
            total_cost = coalesce(rows.total_cost, e.total_cost),
            charged_at = CASE WHEN rows.status = 'charged' THEN now() END,
            rejection_code = rows.rejection_code,
            rejection_reason = rows.rejection_reason,
            rejection_details = rows.rejection_details
        FROM {source}
        WHERE e.tenant_id = :tenant_id AND e.id = rows.id
    """), {**params, "tenant_id": tenant_id})
