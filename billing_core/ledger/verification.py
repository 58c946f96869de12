"""Reading and checking the ledger."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text

from billing_core import money
from billing_core.db import UnitOfWork
from billing_core.errors import ValidationFailed
from billing_core.ledger.model import LedgerEntry
from billing_core.ledger.tables import ledger_entries, wallets


def list_entries(uow: UnitOfWork, tenant_id: str, *, start: datetime | None = None, end: datetime | None = None,
                 entry_type: str | None = None, limit: int, cursor: str | None = None) -> tuple[list[LedgerEntry], str | None]:
    """One page of the tenant's ledger entries, newest first; the cursor is the last entry's sequence."""
    query = select(ledger_entries).where(ledger_entries.c.tenant_id == tenant_id)
    if start is not None:
        query = query.where(ledger_entries.c.created_at >= start)
    if end is not None:
        query = query.where(ledger_entries.c.created_at < end)
    if entry_type is not None:
        query = query.where(ledger_entries.c.entry_type == entry_type)
    if cursor:
        if not re.fullmatch(r"[0-9]{1,18}", cursor):
            raise ValidationFailed("cursor", "not a cursor this service issued")
        query = query.where(ledger_entries.c.seq < int(cursor))
    rows = uow.connection.execute(query.order_by(ledger_entries.c.seq.desc()).limit(limit + 1)).all()
    entries = [LedgerEntry(**r._mapping) for r in rows[:limit]]
    return entries, (str(entries[-1].seq) if len(rows) > limit else None)


@dataclass(frozen=True)
class Verification:
    ok: bool
    wallets_checked: int
    mismatches: list[dict[str, Any]]


def verify(uow: UnitOfWork, tenant_id: str | None = None) -> Verification:
    """Check each wallet: its balance equals the sum of its entries and the sum of its grants'
    remaining amounts; its reserved balance equals the sum of the entries' reserved changes and the
    sum of its active holds; each entry's balance_before equals the previous entry's balance_after
    (the first starts from zero).

    With no tenant, every wallet is checked: an operator's cross-tenant audit (its statements are named
    operator-wide scans without locks; the window is partitioned by tenant too, so Citus runs it per shard).
    """
    mismatches = _reserved_and_grant_mismatches(uow, tenant_id) + _settled_holds_without_event(uow, tenant_id)
    wallet_query = select(wallets.c.id, wallets.c.tenant_id, wallets.c.current_balance)
    chain = select(
        ledger_entries.c.wallet_id, ledger_entries.c.id, ledger_entries.c.seq,
        ledger_entries.c.balance_before, ledger_entries.c.balance_after, ledger_entries.c.amount,
        func.lag(ledger_entries.c.balance_after).over(
            partition_by=(ledger_entries.c.tenant_id, ledger_entries.c.wallet_id), order_by=ledger_entries.c.seq
        ).label("previous_after"),
    )
    if tenant_id is None:
        wallet_query = wallet_query.prefix_with(_SCAN)
        chain = chain.prefix_with(_SCAN)
    else:
        wallet_query = wallet_query.where(wallets.c.tenant_id == tenant_id)
        chain = chain.where(ledger_entries.c.tenant_id == tenant_id)
    chain_sub = chain.subquery()
    broken_links = uow.connection.execute(
        select(chain_sub).where(
            func.coalesce(chain_sub.c.previous_after, 0) != chain_sub.c.balance_before
        )
    ).all()
    sums = dict(
        uow.connection.execute(
            select(chain_sub.c.wallet_id, func.sum(chain_sub.c.amount)).group_by(chain_sub.c.wallet_id)
        ).all()
    )
    checked = 0
    for wallet_id, wallet_tenant, balance in uow.connection.execute(wallet_query):
        checked += 1
        entries_total = sums.get(wallet_id, Decimal(0))
        if entries_total != balance:
            mismatches.append({
                "walletId": str(wallet_id), "tenantId": wallet_tenant, "kind": "balance",
                "balance": money.format_decimal(balance), "sumOfEntries": money.format_decimal(entries_total),
            })
    for link in broken_links:
        mismatches.append({
            "walletId": str(link.wallet_id), "kind": "chain", "entryId": str(link.id),
            "balanceBefore": money.format_decimal(link.balance_before),
            "previousBalanceAfter": money.format_decimal(link.previous_after or Decimal(0)),
        })
    from billing_core.documents import credit_notes  # documents sit above the ledger

    mismatches += credit_notes.mismatches(uow, tenant_id)  # each note is what its entry moved
    return Verification(ok=not mismatches, wallets_checked=checked, mismatches=mismatches)


_SCAN = "/* citus:operator-scan reconciliation */"


def _scope(alias: str, tenant_id: str | None) -> str:
    return f"{alias}.tenant_id = :tenant_id" if tenant_id is not None else f"true {_SCAN}"


def _settled_holds_without_event(uow: UnitOfWork, tenant_id: str | None) -> list[dict[str, Any]]:
    """Settled holds whose event is not there. No foreign key says so since migration 0050 (it made a cycle
    with usage_events.reservation_id that Citus cannot distribute): the settlement writes the hold, its
    ledger entry (whose key names the event) and the event in one transaction, and this check reports it
    should that ever not hold."""
    rows = uow.connection.execute(text(f"""
        SELECT r.tenant_id, r.id, r.usage_event_id FROM reservations r
        WHERE {_scope("r", tenant_id)} AND r.usage_event_id IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM usage_events e WHERE e.tenant_id = r.tenant_id AND e.id = r.usage_event_id)
    """), {"tenant_id": tenant_id}).all()
    return [{"tenantId": r.tenant_id, "kind": "hold_event", "reservationId": str(r.id),
             "usageEventId": str(r.usage_event_id)} for r in rows]


def _reserved_and_grant_mismatches(uow: UnitOfWork, tenant_id: str | None) -> list[dict[str, Any]]:
    rows = uow.connection.execute(text(f"""
        SELECT w.id, w.tenant_id, w.current_balance, w.reserved_balance,
               coalesce((SELECT sum(g.remaining) FROM credit_grants g
                         WHERE g.tenant_id = w.tenant_id AND g.wallet_id = w.id), 0) AS grants,
               coalesce((SELECT sum(l.reserved_change) FROM ledger_entries l
                         WHERE l.tenant_id = w.tenant_id AND l.wallet_id = w.id), 0) AS reserved_entries,
               coalesce((SELECT sum(r.amount) FROM reservations r
                         WHERE r.tenant_id = w.tenant_id AND r.wallet_id = w.id AND r.status = 'active'
                           AND r.agency_id IS NULL), 0) AS holds
        FROM wallets w
        WHERE {_scope("w", tenant_id)}
    """), {"tenant_id": tenant_id})
    found: list[dict[str, Any]] = []
    for row in rows:
        base = {"walletId": str(row.id), "tenantId": row.tenant_id}
        if row.grants != row.current_balance:
            found.append({**base, "kind": "grants", "balance": money.format_decimal(row.current_balance),
                          "sumOfGrants": money.format_decimal(row.grants)})
        if not (row.reserved_balance == row.reserved_entries == row.holds):
            found.append({**base, "kind": "reserved", "reservedBalance": money.format_decimal(row.reserved_balance),
                          "sumOfReservedChanges": money.format_decimal(row.reserved_entries),
                          "sumOfActiveHolds": money.format_decimal(row.holds)})
    return found
