"""The catalog revision: one row whose number moves in the transaction of every change to what prices a
charge (prices, price adjustments, provider costs, an agency's tree and resale book), so a process that
caches the catalog (prices.PriceCache) reloads it exactly when it changed.

The use case that writes the change bumps it, in its own transaction, before it commits: not a trigger
(under Citus a trigger fires on a shard, from where it cannot update the reference table:
"cannot execute a distributed query from a query on a shard"; docs/scaling.md)."""
from __future__ import annotations

from sqlalchemy import update

from billing_core.catalog.tables import catalog_revision
from billing_core.db import UnitOfWork


def bump_catalog_revision(uow: UnitOfWork) -> None:
    uow.connection.execute(update(catalog_revision).values(revision=catalog_revision.c.revision + 1))
