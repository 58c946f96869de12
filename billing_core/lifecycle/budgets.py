"""Per-feature budgets: a spend limit per day or month, enforced in the same transaction as the debit.

A feature's use in a period is what it spent (charged usage, less refunds) plus what its active holds
hold. Charges, holds and refunds change it only under the wallet's row lock (see WalletBook), so two
concurrent charges cannot both fit under the last of a limit.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert

from billing_core import money
from billing_core.db import UnitOfWork
from billing_core.errors import BudgetExceeded, NotFound, ValidationFailed
from billing_core.fields import FeatureKey
from billing_core.ledger.wallets import get_wallet
from billing_core.lifecycle.tables import budget_spend, budgets, reservations

_FEATURE_KEY = TypeAdapter(FeatureKey)


def valid_feature_key(value: str) -> str:
    """The one check of a budget's feature key, for the API (its path) and the portal (its form) alike:
    what a charge's featureKey may be, "/" included."""
    try:
        return _FEATURE_KEY.validate_python(value)
    except ValidationError:
        raise ValidationFailed("featureKey", "must be 1-64 letters, digits or ._:/-") from None


@dataclass(frozen=True)
class Budget:
    tenant_id: str
    feature_key: str
    spend_limit: Decimal
    period: str
    action: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    period_start: datetime
    spent: Decimal
    held: Decimal

    @property
    def remaining(self) -> Decimal:
        return max(Decimal(0), money.subtract(self.budget.spend_limit, money.add(self.spent, self.held)))


def period_start(period: str, at: datetime) -> datetime:
    at = at.astimezone(timezone.utc)
    start = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return start.replace(day=1) if period == "month" else start


def _held_by_feature(uow: UnitOfWork, tenant_id: str, features: list[str]) -> dict[str, Decimal]:
    if not features:
        return {}
    return dict(uow.connection.execute(
        select(reservations.c.feature_key, func.sum(reservations.c.amount))
        .where(reservations.c.tenant_id == tenant_id, reservations.c.status == "active",
               reservations.c.feature_key.in_(features))
        .group_by(reservations.c.feature_key)).all())


class BudgetGuard:
    """The tenant's budgets with their spend and holds, as the current transaction changes them."""

    def __init__(self, uow: UnitOfWork, tenant_id: str, found: dict[str, Budget], held: dict[str, Decimal]):
        self.uow, self.tenant_id, self.budgets = uow, tenant_id, found
        self.held = {feature: held.get(feature, Decimal(0)) for feature in found}
        self._spent: dict[tuple[str, datetime], Decimal] = {}
        self._alerted: dict[tuple[str, datetime], bool] = {}
        self._dirty: set[tuple[str, datetime]] = set()
        # `alert` budgets that went over in this transaction: one budget.exceeded each per period
        self.exceeded: list[dict[str, str]] = []

    @classmethod
    def load(cls, uow: UnitOfWork, tenant_id: str) -> BudgetGuard:
        found = {r.feature_key: Budget(**r._mapping)
                 for r in uow.connection.execute(select(budgets).where(budgets.c.tenant_id == tenant_id))}
        return cls(uow, tenant_id, found, _held_by_feature(uow, tenant_id, list(found)))

    def spent(self, feature_key: str, at: datetime) -> Decimal:
        budget = self.budgets[feature_key]
        key = (feature_key, period_start(budget.period, at))
        if key not in self._spent:
            row = self.uow.connection.execute(
                select(budget_spend.c.spent, budget_spend.c.alerted_at).where(
                    budget_spend.c.tenant_id == self.tenant_id, budget_spend.c.feature_key == feature_key,
                    budget_spend.c.period == budget.period, budget_spend.c.period_start == key[1])
            ).one_or_none()
            self._spent[key] = row.spent if row else Decimal(0)
            self._alerted[key] = bool(row and row.alerted_at)
        return self._spent[key]

    def check(self, feature_key: str, at: datetime, amount: Decimal, releasing: Decimal = Decimal(0)) -> None:
        """BudgetExceeded if spending `amount` more at `at` (while a hold of `releasing` for the same
        feature ends) would take the feature over a rejecting budget."""
        budget = self.budgets.get(feature_key)
        if budget is None or budget.action != "reject":
            return
        used = money.subtract(money.add(self.spent(feature_key, at), self.held[feature_key]), releasing)
        if money.add(used, amount) > budget.spend_limit:
            raise BudgetExceeded(
                f"the {budget.period}ly budget of {feature_key} would be exceeded",
                {"featureKey": feature_key, "limit": money.format_decimal(budget.spend_limit),
                 "used": money.format_decimal(used), "requested": money.format_decimal(amount),
                 "period": budget.period},
            )

    def spend(self, feature_key: str, at: datetime, amount: Decimal) -> None:
        """Count `amount` (negative for a refund) against the feature's period of `at`."""
        if feature_key in self.budgets:
            budget = self.budgets[feature_key]
            key = (feature_key, period_start(budget.period, at))
            self._spent[key] = max(Decimal(0), money.add(self.spent(feature_key, at), amount))
            self._dirty.add(key)
            used = money.add(self._spent[key], self.held[feature_key])
            if budget.action == "alert" and used > budget.spend_limit and not self._alerted[key]:
                self._alerted[key] = True
                self.exceeded.append({"featureKey": feature_key, "period": budget.period,
                                      "periodStart": key[1].isoformat(),
                                      "limit": money.format_decimal(budget.spend_limit),
                                      "used": money.format_decimal(used)})

    def take_exceeded(self) -> list[dict[str, str]]:
        """The budget.exceeded notices this transaction raised, handed over once."""
        taken, self.exceeded = self.exceeded, []
        return taken

    def hold_changed(self, feature_key: str, delta: Decimal) -> None:
        if feature_key in self.held:
            self.held[feature_key] = money.add(self.held[feature_key], delta)

    def flush(self) -> None:
        for feature_key, start in self._dirty:
            statement = insert(budget_spend).values(
                tenant_id=self.tenant_id, feature_key=feature_key, period=self.budgets[feature_key].period,
                period_start=start, spent=self._spent[(feature_key, start)],
                alerted_at=func.now() if self._alerted.get((feature_key, start)) else None)
            self.uow.connection.execute(statement.on_conflict_do_update(
                index_elements=[budget_spend.c.tenant_id, budget_spend.c.feature_key, budget_spend.c.period,
                                budget_spend.c.period_start],
                set_={"spent": statement.excluded.spent,
                      "alerted_at": func.coalesce(budget_spend.c.alerted_at, statement.excluded.alerted_at)}))
        self._dirty.clear()


def put_budget(uow: UnitOfWork, tenant_id: str, feature_key: str, *, spend_limit: Decimal, period: str,
               action: str) -> Budget:
    """Create or change a budget. The caller holds the wallet lock (set_budget takes it), so no charge
    runs meanwhile; the current period's spend is counted from the usage already charged."""
    now = uow.now()  # the transaction's time as a parameter: no now() in DO UPDATE SET (Citus)
    row = uow.connection.execute(
        insert(budgets).values(tenant_id=tenant_id, feature_key=feature_key, spend_limit=spend_limit,
                               period=period, action=action, created_at=now, updated_at=now)
        .on_conflict_do_update(index_elements=[budgets.c.tenant_id, budgets.c.feature_key],
                               set_={"spend_limit": spend_limit, "period": period, "action": action,
                                     "updated_at": now})
        .returning(*budgets.c)
    ).one()
    budget = Budget(**row._mapping)
    # set-based: the feature's charges in the current period, less what was refunded of them
    uow.connection.execute(text("""
        INSERT INTO budget_spend (tenant_id, feature_key, period, period_start, spent)
        SELECT :tenant_id, :feature_key, :period, CAST(:period_start AS timestamptz),
               greatest(0, coalesce(sum(e.total_cost), 0) - coalesce((
                   SELECT sum(r.amount) FROM ledger_entries d JOIN ledger_entries r
                        ON r.tenant_id = d.tenant_id AND r.related_entry_id = d.id AND r.entry_type = 'refund'
                   WHERE d.tenant_id = :tenant_id AND d.entry_type = 'debit' AND d.usage_event_id IN (
                       SELECT id FROM usage_events WHERE tenant_id = :tenant_id AND feature_key = :feature_key
                         AND status = 'charged'
                         AND occurred_at >= CAST(:period_start AS timestamptz))), 0))
        FROM usage_events e
        WHERE e.tenant_id = :tenant_id AND e.feature_key = :feature_key AND e.status = 'charged'
          AND e.occurred_at >= CAST(:period_start AS timestamptz)
        ON CONFLICT (tenant_id, feature_key, period, period_start) DO UPDATE SET spent = excluded.spent
    """), {"tenant_id": tenant_id, "feature_key": feature_key, "period": period,
          "period_start": period_start(period, now)})
    # an agency's budgets count its sub-accounts' usage at its price too (net of what refunds and
    # corrections gave back), in the period of each event's acceptance, as charging counts it
    start = period_start(period, now)
    uow.connection.execute(text("""
        UPDATE budget_spend SET spent = greatest(0, spent + coalesce((
            SELECT sum(a.agency_amount - a.agency_refunded - a.agency_corrected) FROM agency_charges a
            WHERE a.tenant_id = :tenant_id AND a.feature_key = :feature_key AND a.created_at >= :start), 0))
        WHERE tenant_id = :tenant_id AND feature_key = :feature_key AND period = :period AND period_start = :start
    """), {"tenant_id": tenant_id, "feature_key": feature_key, "period": period, "start": start})
    return budget


def set_budget(uow: UnitOfWork, tenant_id: str, feature_key: str, *, spend_limit: Decimal, period: str,
               action: str) -> BudgetStatus:
    """PUT /budgets and the portal's form: create or change the budget under the wallet's lock (no
    charge of this tenant runs meanwhile), commit, and answer it with its spend in the current period.
    Anything the caller wrote in this unit of work (the page's action record) commits with it."""
    get_wallet(uow, tenant_id, lock=True)
    put_budget(uow, tenant_id, feature_key, spend_limit=spend_limit, period=period, action=action)
    status = next(b for b in list_budgets(uow, tenant_id) if b.budget.feature_key == feature_key)
    uow.commit()
    return status


def remove_budget(uow: UnitOfWork, tenant_id: str, feature_key: str) -> list[BudgetStatus]:
    """DELETE /budgets and the portal's button: remove the budget under the wallet's lock and commit;
    answers the budgets left. NotFound (nothing committed) when the feature has no budget."""
    get_wallet(uow, tenant_id, lock=True)
    # no check of the key: whatever was stored can be removed
    if not delete_budget(uow, tenant_id, feature_key):
        raise NotFound(f"no budget for {feature_key}")
    remaining = list_budgets(uow, tenant_id)
    uow.commit()
    return remaining


def list_budgets(uow: UnitOfWork, tenant_id: str) -> list[BudgetStatus]:
    guard = BudgetGuard.load(uow, tenant_id)
    now = uow.now()
    return [BudgetStatus(b, period_start(b.period, now), guard.spent(b.feature_key, now), guard.held[b.feature_key])
            for _, b in sorted(guard.budgets.items())]


def delete_budget(uow: UnitOfWork, tenant_id: str, feature_key: str) -> bool:
    return uow.connection.execute(
        budgets.delete().where(budgets.c.tenant_id == tenant_id, budgets.c.feature_key == feature_key)
    ).rowcount > 0

