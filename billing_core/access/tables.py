from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

from billing_core.db import metadata

portal_sessions = Table(
    "portal_sessions", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("id", Uuid, primary_key=True),
    Column("token_hash", Text, nullable=False),  # SHA-256 of the link's secret; the secret is never stored
    Column("session_hash", Text),  # SHA-256 of the cookie's secret, drawn when the link is opened
    Column("opened_at", DateTime(timezone=True)),  # the link's one opening
    Column("created_by", Text),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


console_sessions = Table(  # operators only: no tenant
    "console_sessions", metadata,
    Column("id", Uuid, primary_key=True),
    Column("token_hash", Text, nullable=False),
    Column("session_hash", Text),
    Column("opened_at", DateTime(timezone=True)),
    Column("created_by", Text),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


page_actions = Table(
    "page_actions", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("id", Uuid, primary_key=True),
    Column("surface", Text, nullable=False),
    Column("session_id", Uuid, nullable=False),
    Column("action", Text, nullable=False),
    Column("request", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
