"""Where a tenant's graduated tiers stand: its cumulative billed quantity of each catalog item in a
UTC calendar month.

The charging path reads the positions of a group's items once, under the wallet's row lock, advances
them in memory in event order as each event is charged (never for a refused one), and writes them back
in the same transaction as the debits (one statement). So concurrent charges, group commit, retries
and a worker killed mid-group can never count a unit twice or skip one: the position and the debits
commit together or not at all. A refund does not move the position back (the units were used); a new
month starts at zero. Quotes and acceptance read the committed position without the lock: an estimate
the charge corrects.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import func, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert

from billing_core import money
from billing_core.catalog.prices import CatalogKey
from billing_core.catalog.tables import tier_positions
from billing_core.db import UnitOfWork

PositionKey = tuple[CatalogKey, datetime]  # catalog item, first moment of its UTC month
ZERO = Decimal(0)


def month_of(at: datetime) -> datetime:
    at = at.astimezone(timezone.utc)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class TierPositions:
    """The positions of some of a tenant's items, as this transaction moves them."""

    def __init__(self, uow: UnitOfWork, tenant_id: str, found: dict[PositionKey, Decimal] | None = None,
                 *, locked: bool):
        self.uow, self.tenant_id, self.locked = uow, tenant_id, locked
        self._positions: dict[PositionKey, Decimal] = dict(found or {})
        self._loaded: set[PositionKey] = set(self._positions)
        self._dirty: set[PositionKey] = set()

    def load(self, wanted: Iterable[PositionKey]) -> None:
        """Read the positions not read yet, in one statement."""
        missing = sorted(set(wanted) - self._loaded)
        if not missing:
            return
        c = tier_positions.c
        rows = self.uow.connection.execute(
            select(c.category, c.provider, c.model, c.unit, c.period_start, c.billed_quantity)
            .where(c.tenant_id == self.tenant_id,
                   or_(*[tuple_(c.category, c.provider, c.model, c.unit, c.period_start) == (*key, month)
                         for key, month in missing])))
        for row in rows:
            self._positions[((row.category, row.provider, row.model, row.unit), row.period_start)] = row.billed_quantity
        self._loaded |= set(missing)

    def position(self, key: CatalogKey, at: datetime) -> Decimal:
        wanted = (key, month_of(at))
        if wanted not in self._loaded:
            self.load([wanted])
        return self._positions.get(wanted, ZERO)

    def advance(self, advances: Iterable[tuple[CatalogKey, datetime, Decimal]]) -> None:
        """Count billed quantities of a charged event (key, event time, quantity)."""
        assert self.locked, "only the charging path, under the wallet lock, moves tier positions"
        for key, at, quantity in advances:
            wanted = (key, month_of(at))
            if wanted not in self._loaded:
                self.load([wanted])
            self._positions[wanted] = money.add(self._positions.get(wanted, ZERO), quantity)
            self._dirty.add(wanted)

    def flush(self) -> None:
        if not self._dirty:
            return
        statement = insert(tier_positions).values([
            {"tenant_id": self.tenant_id, "category": key[0], "provider": key[1], "model": key[2], "unit": key[3],
             "period_start": month, "billed_quantity": self._positions[(key, month)], "updated_at": func.now()}
            for key, month in sorted(self._dirty)])
        self.uow.connection.execute(statement.on_conflict_do_update(
            index_elements=[tier_positions.c.tenant_id, tier_positions.c.category, tier_positions.c.provider,
                            tier_positions.c.model, tier_positions.c.unit, tier_positions.c.period_start],
            # the row's own updated_at (now() in VALUES): no non-immutable function in DO UPDATE SET (Citus)
            set_={"billed_quantity": statement.excluded.billed_quantity, "updated_at": statement.excluded.updated_at}))
        self._dirty.clear()


class ReplayedPositions(TierPositions):
    """Graduated positions as a replay of a tenant's past events moves them, from zero at the replay's
    first month, in the order the events happened (re-rates, the price book's preview): nothing is read
    or written."""

    def __init__(self, uow: UnitOfWork, tenant_id: str) -> None:
        super().__init__(uow, tenant_id, locked=False)
        self.running: dict[PositionKey, Decimal] = {}

    def load(self, wanted: Iterable[PositionKey]) -> None:
        return None

    def position(self, key: CatalogKey, at: datetime) -> Decimal:
        return self.running.get((key, month_of(at)), ZERO)

    def moved(self, advances: Iterable[tuple[CatalogKey, datetime, Decimal]]) -> None:
        """Advance the replay by an event's graduated quantities."""
        for key, at, quantity in advances:
            self.running[(key, month_of(at))] = money.add(self.position(key, at), quantity)


@dataclass
class UsageItem:
    """One item of a past event as a replay prices it again."""
    category: str
    provider: str
    model: str
    unit: str
    quantity: Decimal

    @property
    def key(self) -> CatalogKey:
        return (self.category, self.provider, self.model, self.unit)
