"""Effective-dated rows (multipliers, provider costs): a change is a new row from its start, and the
row in force until then is closed at that moment, never edited otherwise (as prices are)."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, select

from billing_core.catalog.revision import bump_catalog_revision
from billing_core.db import UnitOfWork
from billing_core.errors import ValidationFailed


def put_dated(uow: UnitOfWork, table: Table, scope: list[ColumnElement[bool]], values: dict[str, Any],
              same: Callable[[Any], bool], effective_from: datetime | None) -> tuple[Any, bool]:
    """Insert `values` from `effective_from` (default now) for the rows matching `scope`, closing the
    open one; the same values again (with no start, or the same start) change nothing. A start cannot
    be in the past: charges are priced and costed at their event's time. Commits. Returns the row in
    force from then on, and whether it is new."""
    now = uow.now()
    start = effective_from or now
    # the open rows of this scope, locked: two changes of one scope run one after the other
    open_rows = uow.connection.execute(
        select(table).where(*scope, table.c.effective_to.is_(None)).with_for_update()).all()
    for current in open_rows:
        if same(current) and (effective_from is None or current.effective_from == start):
            uow.rollback()
            return current, False
    if start < now:
        raise ValidationFailed("effectiveFrom", "must not be in the past")
    for current in open_rows:
        if current.effective_from >= start:
            raise ValidationFailed("effectiveFrom", "must be after the start of the latest row of this scope "
                                   f"({current.effective_from.isoformat()})")
    if open_rows:
        uow.connection.execute(table.update().where(*scope, table.c.effective_to.is_(None))
                               .values(effective_to=start))
    row = uow.connection.execute(table.insert().values(id=uuid.uuid4(), effective_from=start, created_at=now,
                                                       **values).returning(*table.c)).one()
    bump_catalog_revision(uow)  # multipliers and provider costs are part of what the catalog cache holds
    uow.commit()
    return row, True
