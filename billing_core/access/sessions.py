"""Portal and console sessions. A link carries a random secret; only its SHA-256 is stored, with the
tenant (portal), the expiry and the revocation. A link opens once: its first opening exchanges it for a
session secret of its own (also stored only as its SHA-256), which the browser keeps in an HttpOnly
cookie; the link then opens nothing (it stays in the browser's history and may be forwarded or logged).
Every request is checked against the stored row: an expired or revoked session stops at once."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, func, insert, select, update

from billing_core.access.tables import console_sessions, portal_sessions
from billing_core.db import UnitOfWork
from billing_core.errors import NotFound

PORTAL, CONSOLE = "portal", "console"
DEFAULT_TTL_MINUTES = 60
MAX_TTL_MINUTES = 720
# the portal's link token and cookie are "<tenantId>~<secret>": "~" is in no tenant id, so the tenant (the
# shard) is known before the lookup, and a changed tenant simply matches no session
SEPARATOR = "~"
USED = "used"  # a link opened once already


@dataclass(frozen=True)
class PageSession:
    surface: str
    id: uuid.UUID
    tenant_id: str | None  # None: the console (every tenant)
    expires_at: datetime
    created_by: str | None
    secret: str  # the session's own secret, from the cookie; never stored

    @property
    def cookie(self) -> str:
        return f"{self.tenant_id}{SEPARATOR}{self.secret}" if self.surface == PORTAL else self.secret

    @property
    def csrf_token(self) -> str:
        """The form token of this session: an HMAC of the session's own secret, so a page of another
        origin can neither read nor forge it (synchronizer token bound to the session)."""
        return hmac.new(self.secret.encode(), f"lad-csrf:{self.surface}:{self.id}".encode(),
                        hashlib.sha256).hexdigest()

    def accepts_csrf(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token, token or "")


@dataclass(frozen=True)
class NewSession:
    id: uuid.UUID
    token: str  # shown once, in the link
    expires_at: datetime


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_portal_session(uow: UnitOfWork, tenant_id: str, *, ttl_minutes: int, created_by: str | None) -> NewSession:
    """A link for one tenant's portal, valid `ttl_minutes`; commits."""
    secret, session_id = secrets.token_urlsafe(32), uuid.uuid4()
    expires_at = uow.connection.execute(
        insert(portal_sessions)
        .values(tenant_id=tenant_id, id=session_id, token_hash=_digest(secret), created_by=created_by,
                expires_at=func.now() + timedelta(minutes=ttl_minutes), created_at=func.now())
        .returning(portal_sessions.c.expires_at)
    ).scalar_one()
    uow.commit()
    return NewSession(session_id, f"{tenant_id}{SEPARATOR}{secret}", expires_at)


def create_console_session(uow: UnitOfWork, *, ttl_minutes: int, created_by: str | None) -> NewSession:
    """A link for the operators' console, valid `ttl_minutes`; commits."""
    secret, session_id = secrets.token_urlsafe(32), uuid.uuid4()
    expires_at = uow.connection.execute(
        insert(console_sessions)
        .values(id=session_id, token_hash=_digest(secret), created_by=created_by,
                expires_at=func.now() + timedelta(minutes=ttl_minutes), created_at=func.now())
        .returning(console_sessions.c.expires_at)
    ).scalar_one()
    uow.commit()
    return NewSession(session_id, secret, expires_at)


def _parsed(surface: str, token: str | None) -> tuple[str | None, str] | None:
    """(tenant, secret) of a portal token or cookie, (None, secret) of a console one; None if malformed."""
    if not token or len(token) > 200:
        return None
    if surface != PORTAL:
        return None, token
    tenant_id, separator, secret = token.rpartition(SEPARATOR)
    if not separator or not tenant_id or not secret:
        return None
    return tenant_id, secret


def _table(surface: str, tenant_id: str | None) -> tuple[Table, list[Any]]:
    if surface == PORTAL:
        return portal_sessions, [portal_sessions.c.tenant_id == tenant_id]
    return console_sessions, []


def _live(table: Table) -> list[Any]:
    return [table.c.revoked_at.is_(None), table.c.expires_at > func.now()]


def link_state(uow: UnitOfWork, surface: str, link_token: str | None) -> str | None:
    """What a link opens now, without opening it: the tenant ("" for the console), USED when it was
    opened once already, None when it opens nothing (unknown, tampered, expired or revoked)."""
    parsed = _parsed(surface, link_token)
    if parsed is None:
        return None
    tenant_id, secret = parsed
    table, conditions = _table(surface, tenant_id)
    row = uow.connection.execute(
        select(table.c.opened_at).where(*conditions, table.c.token_hash == _digest(secret), *_live(table))
    ).one_or_none()
    if row is None:
        return None
    return USED if row.opened_at is not None else tenant_id or ""


def open_link(uow: UnitOfWork, surface: str, link_token: str | None) -> PageSession | None:
    """A link's first opening: a new session secret becomes the browser's credential and the link is
    used up; commits. None when the link opens nothing now (link_state says why)."""
    parsed = _parsed(surface, link_token)
    if parsed is None:
        return None
    tenant_id, link_secret = parsed
    table, conditions = _table(surface, tenant_id)
    secret = secrets.token_urlsafe(32)
    row = uow.connection.execute(
        update(table)
        .where(*conditions, table.c.token_hash == _digest(link_secret), table.c.opened_at.is_(None), *_live(table))
        .values(opened_at=func.now(), session_hash=_digest(secret))
        .returning(table.c.id, table.c.expires_at, table.c.created_by)
    ).one_or_none()
    if row is None:
        uow.rollback()
        return None
    uow.commit()
    return PageSession(surface, row.id, tenant_id, row.expires_at, row.created_by, secret)


def find_session(uow: UnitOfWork, surface: str, cookie: str | None) -> PageSession | None:
    """The live session a cookie names, or None (unknown, tampered, expired or revoked). A link's own
    token is not a cookie: it matches nothing here."""
    parsed = _parsed(surface, cookie)
    if parsed is None:
        return None
    tenant_id, secret = parsed
    table, conditions = _table(surface, tenant_id)
    row = uow.connection.execute(
        select(table).where(*conditions, table.c.session_hash == _digest(secret), *_live(table))
    ).one_or_none()
    if row is None:
        return None
    return PageSession(surface, row.id, tenant_id, row.expires_at, row.created_by, secret)


def revoke_portal_session(uow: UnitOfWork, tenant_id: str, session_id: uuid.UUID) -> None:
    """End a portal session now (revoking it again changes nothing); another tenant's is not found. Commits."""
    found = uow.connection.execute(
        update(portal_sessions)
        .where(portal_sessions.c.tenant_id == tenant_id, portal_sessions.c.id == session_id)
        # the transaction's time as a parameter: no now() in COALESCE on a distributed table (Citus)
        .values(revoked_at=func.coalesce(portal_sessions.c.revoked_at, uow.now()))
        .returning(portal_sessions.c.id)
    ).first()
    if found is None:
        raise NotFound(f"portal session {session_id} not found")
    uow.commit()


def revoke_console_session(uow: UnitOfWork, session_id: uuid.UUID) -> None:
    """End a console session now; commits."""
    found = uow.connection.execute(
        update(console_sessions).where(console_sessions.c.id == session_id)
        .values(revoked_at=func.coalesce(console_sessions.c.revoked_at, uow.now()))
        .returning(console_sessions.c.id)
    ).first()
    if found is None:
        raise NotFound(f"console session {session_id} not found")
    uow.commit()
