"""Operator-wide reads for the console, across every tenant (the explicit exception to filtering on one
tenant: these are the operators' own views, never a tenant's)."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection

from billing_core import money
from billing_core.catalog import Price
from billing_core.catalog.tables import prices
from billing_core.db import UnitOfWork
from billing_core.ledger.model import Wallet
from billing_core.ledger.tables import reconciliation_runs, wallets
from billing_core.notifications.tables import notifications

TENANTS_PAGE = 50


def tenants(uow: UnitOfWork, search: str | None = None, *, flagged: bool = False, blocked: bool = False,
            limit: int = TENANTS_PAGE) -> list[Wallet]:
    """Wallets with the most recent activity (a balance or setting change) first; `search` matches a
    part of the tenant id; `flagged` / `blocked` keep only those."""
    query = select(wallets).prefix_with("/* citus:operator-scan operator-reports */")  # every tenant's, no lock
    if search:
        query = query.where(func.strpos(func.lower(wallets.c.tenant_id), search.lower()) > 0)
    if flagged:
        query = query.where(wallets.c.flagged_at.is_not(None))
    if blocked:
        query = query.where(wallets.c.status == "blocked")
    rows = uow.connection.execute(query.order_by(wallets.c.updated_at.desc(), wallets.c.tenant_id).limit(limit)).all()
    return [Wallet(**r._mapping) for r in rows]


@dataclass(frozen=True)
class Backlog:
    pending: int
    oldest_seconds: Decimal
    by_tenant: list[tuple[str, int, Decimal]]  # tenant, pending charges, age of its oldest in seconds


def pending_backlog(uow: UnitOfWork, limit: int = 20) -> Backlog:
    """Charges accepted and not yet charged or rejected, and how long the oldest has waited."""
    rows = uow.connection.execute(text("""
        SELECT tenant_id, count(*) AS pending, extract(epoch FROM now() - min(created_at)) AS oldest
        FROM usage_events /* citus:operator-scan operator-reports */
        WHERE status = 'pending' GROUP BY tenant_id ORDER BY oldest DESC LIMIT :limit"""),
        {"limit": limit}).all()
    total, oldest = pending_totals(uow.connection)
    return Backlog(total, money.normalize(Decimal(oldest).quantize(Decimal("0.1"))),
                   [(r.tenant_id, r.pending, money.normalize(Decimal(r.oldest).quantize(Decimal("0.1"))))
                    for r in rows])


def pending_totals(connection: Connection) -> tuple[int, Decimal]:
    """How many usage events wait to be charged, and the age of the oldest in seconds (0 when none):
    the backlog is a fact of the database, not of any one process (also /metrics' gauges)."""
    count, oldest = connection.execute(text(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM usage_events "
        "/* citus:operator-scan operator-reports */ WHERE status = 'pending'")).one()
    return count, oldest


@dataclass(frozen=True)
class CallSlots:
    tenant_id: str
    active: int
    ceiling: int  # the plan's limit, burst slots included


def call_slots(connection: Connection) -> list[CallSlots]:
    """Active calls (live holds) of every tenant whose plan limits them, with that limit: a deliberately
    cross-tenant read over the small call_plans table and the active-holds index (/metrics, the console)."""
    rows = connection.execute(text("""
        SELECT p.tenant_id, greatest(p.max_concurrent_calls, coalesce(p.burst_limit, 0)) AS ceiling,
               (SELECT count(*) FROM reservations r WHERE r.tenant_id = p.tenant_id AND r.status = 'active'
                AND r.expires_at > now()) AS active
        FROM call_plans p /* citus:operator-scan operator-reports */
        WHERE p.max_concurrent_calls IS NOT NULL ORDER BY p.tenant_id""")).all()
    return [CallSlots(r.tenant_id, r.active, r.ceiling) for r in rows]


def tenant_exists(uow: UnitOfWork, tenant_id: str) -> bool:
    """Whether the tenant has a wallet; asking never creates one."""
    return uow.connection.execute(
        select(wallets.c.id).where(wallets.c.tenant_id == tenant_id)).first() is not None


def reconciliation_history(uow: UnitOfWork, limit: int = 48) -> list[dict[str, Any]]:
    """The latest hourly reconciliation runs, newest first, with their mismatches."""
    rows = uow.connection.execute(
        select(reconciliation_runs).order_by(reconciliation_runs.c.slot.desc()).limit(limit)).all()
    return [dict(r._mapping) for r in rows]



def failed_notifications(uow: UnitOfWork, limit: int = 50) -> list[dict[str, Any]]:
    """Notifications that gave up (every tenant's and the operators'), most recent failure first."""
    rows = uow.connection.execute(
        select(notifications.c.id, notifications.c.tenant_id, notifications.c.event_type, notifications.c.channel,
               notifications.c.destination, notifications.c.attempts, notifications.c.last_error,
               notifications.c.failed_at)
        .where(notifications.c.status == "failed")
        .order_by(notifications.c.failed_at.desc().nulls_last()).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


def price_rows(uow: UnitOfWork, limit: int = 500) -> list[Price]:
    """Every catalog row, global and tenants' overrides, with its effective dates: those in force and
    those to come first, then the closed ones."""
    rows = uow.connection.execute(
        select(prices).order_by(prices.c.effective_to.desc().nulls_first(), prices.c.category, prices.c.provider,
                                prices.c.model, prices.c.unit, prices.c.tenant_id.nulls_first(),
                                prices.c.effective_from.desc()).limit(limit)).all()
    return [Price.from_row(r) for r in rows]  # with its terms: pricing model, tiers, package
