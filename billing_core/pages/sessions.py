"""Portal and console sessions. A link carries a random secret; only its SHA-256 is stored, with the
tenant (portal), the expiry and the revocation. The browser keeps the same token in an HttpOnly cookie,
so every request is checked against the stored row: an expired or revoked session stops at once."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update

from ..db import UnitOfWork
from ..errors import NotFound
from ..tables import console_sessions, portal_sessions

PORTAL, CONSOLE = "portal", "console"
DEFAULT_TTL_MINUTES = 60
MAX_TTL_MINUTES = 720
# the portal token is "<tenantId>~<secret>": "~" is in no tenant id, so the tenant (the shard) is known
# before the lookup, and a changed tenant simply matches no session
SEPARATOR = "~"


@dataclass(frozen=True)
class PageSession:
    surface: str
    id: uuid.UUID
    tenant_id: str | None  # None: the console (every tenant)
    expires_at: datetime
    created_by: str | None
    secret: str  # from the cookie; never stored

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


def find_session(uow: UnitOfWork, surface: str, token: str | None) -> PageSession | None:
    """The live session a token opens, or None (unknown, tampered, expired or revoked)."""
    if not token or len(token) > 200:
        return None
    if surface == PORTAL:
        tenant_id, separator, secret = token.rpartition(SEPARATOR)
        if not separator or not tenant_id or not secret:
            return None
        table, conditions = portal_sessions, [portal_sessions.c.tenant_id == tenant_id]
    else:
        tenant_id, secret = None, token
        table, conditions = console_sessions, []
    row = uow.connection.execute(
        select(table).where(*conditions, table.c.token_hash == _digest(secret), table.c.revoked_at.is_(None),
                            table.c.expires_at > func.now())
    ).one_or_none()
    if row is None:
        return None
    return PageSession(surface, row.id, tenant_id, row.expires_at, row.created_by, secret)


def revoke_portal_session(uow: UnitOfWork, tenant_id: str, session_id: uuid.UUID) -> None:
    """End a portal session now (revoking it again changes nothing); another tenant's is not found. Commits."""
    found = uow.connection.execute(
        update(portal_sessions)
        .where(portal_sessions.c.tenant_id == tenant_id, portal_sessions.c.id == session_id)
        .values(revoked_at=func.coalesce(portal_sessions.c.revoked_at, func.now()))
        .returning(portal_sessions.c.id)
    ).first()
    if found is None:
        raise NotFound(f"portal session {session_id} not found")
    uow.commit()


def revoke_console_session(uow: UnitOfWork, session_id: uuid.UUID) -> None:
    """End a console session now; commits."""
    found = uow.connection.execute(
        update(console_sessions).where(console_sessions.c.id == session_id)
        .values(revoked_at=func.coalesce(console_sessions.c.revoked_at, func.now()))
        .returning(console_sessions.c.id)
    ).first()
    if found is None:
        raise NotFound(f"console session {session_id} not found")
    uow.commit()
