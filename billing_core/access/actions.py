"""The record of every change made through the portal or the console, written in the same unit of work
as the change itself (the use case's commit makes both durable, or neither)."""
from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, insert, select

from billing_core.access.sessions import PageSession
from billing_core.access.tables import page_actions
from billing_core.db import UnitOfWork


def record(uow: UnitOfWork, session: PageSession, tenant_id: str, action: str, request: dict[str, Any]) -> None:
    """Note `action` on `tenant_id` by `session`; the caller's use case commits it."""
    uow.connection.execute(insert(page_actions).values(
        tenant_id=tenant_id, id=uuid.uuid4(), surface=session.surface, session_id=session.id, action=action,
        request=request, created_at=func.now()))


def recent(uow: UnitOfWork, tenant_id: str, limit: int = 50) -> list[dict[str, Any]]:
    rows = uow.connection.execute(
        select(page_actions).where(page_actions.c.tenant_id == tenant_id)
        .order_by(page_actions.c.created_at.desc()).limit(limit)).all()
    return [dict(r._mapping) for r in rows]
