"""Gating a feature on balance: may this tenant start work costing about this much? A read only."""
from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from billing_core import money
from billing_core.ledger.model import owes
from billing_core.lifecycle.budgets import period_start


@dataclass(frozen=True)
class Entitlement:
    allowed: bool
    available_balance: Decimal
    reason: str | None  # None, insufficient_balance, wallet_blocked or budget_exceeded
    in_debt: bool = False  # frozen for new calls (a hold would be refused: 402 in_debt)


_QUERY = text("""
    SELECT now() AS now, w.id AS wallet_id, w.status, w.current_balance, w.reserved_balance, w.overdraft_limit,
           coalesce((SELECT sum(r.amount) FROM reservations r WHERE r.tenant_id = w.tenant_id
                     AND r.status = 'active' AND r.expires_at <= now()), 0) AS due_holds,
           coalesce((SELECT sum(g.remaining) FROM credit_grants g WHERE g.tenant_id = w.tenant_id
                     AND g.remaining > 0 AND g.expires_at <= now()), 0) AS due_credits,
           b.spend_limit, b.period, b.action,
           coalesce((SELECT sum(r.amount) FROM reservations r WHERE r.tenant_id = w.tenant_id
                     AND r.status = 'active' AND r.feature_key = :feature_key), 0) AS feature_held
    FROM wallets w
    LEFT JOIN budgets b ON b.tenant_id = w.tenant_id AND b.feature_key = :feature_key
    WHERE w.tenant_id = :tenant_id
""")  # from the wallet (no row: no wallet yet), not from a constant row outer-joined to it (Citus refuses that)


def check(connection, tenant_id: str, feature_key: str, estimated_cost: Decimal) -> Entitlement:  # noqa: ANN001
    """What a charge of `estimated_cost` for the feature would meet now, computed as the charging path
    would see it (holds and credits past their expiry already ended), without writing anything.
    `in_debt` says whether the wallet is frozen for new calls (the API answers that 402 in_debt)."""
    row = connection.execute(_QUERY, {"tenant_id": tenant_id, "feature_key": feature_key}).one_or_none()
    if row is None:  # no wallet yet: nothing to spend
        return Entitlement(estimated_cost <= 0, Decimal(0), None if estimated_cost <= 0 else "insufficient_balance")
    # as expiry.end_due: holds end first, then overdue credits expire beyond what backs the rest
    reserved = money.subtract(row.reserved_balance, row.due_holds)
    expiring = max(Decimal(0), money.subtract(row.due_credits, max(reserved, Decimal(0))))
    available = money.subtract(money.subtract(row.current_balance, reserved), expiring)
    found = _judge(connection, tenant_id, feature_key, estimated_cost, row, available)
    return replace(found, in_debt=owes(money.subtract(row.current_balance, expiring), row.overdraft_limit))


def _judge(connection, tenant_id: str, feature_key: str, estimated_cost: Decimal, row: Any,  # noqa: ANN001
           available: Decimal) -> Entitlement:
    if row.status != "active":
        return Entitlement(False, available, "wallet_blocked")
    if row.action == "reject":
        spent = connection.execute(text(
            "SELECT spent FROM budget_spend WHERE tenant_id = :t AND feature_key = :f AND period = :p "
            "AND period_start = :s"), {"t": tenant_id, "f": feature_key, "p": row.period,
                                       "s": period_start(row.period, row.now)}).scalar_one_or_none() or Decimal(0)
        if money.add(money.add(spent, row.feature_held), estimated_cost) > row.spend_limit:
            return Entitlement(False, available, "budget_exceeded")
    if estimated_cost > money.add(available, row.overdraft_limit):
        return Entitlement(False, available, "insufficient_balance")
    return Entitlement(True, available, None)
