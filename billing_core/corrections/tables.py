from __future__ import annotations

from sqlalchemy import Column, DateTime, Table, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB

from billing_core.db import Money, metadata

usage_corrections = Table(
    "usage_corrections", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, primary_key=True),
    Column("usage_event_id", Uuid, nullable=False),
    Column("action", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    Column("request_fingerprint", Text, nullable=False),
    Column("cost_before", Money, nullable=False),
    Column("cost_after", Money, nullable=False),
    Column("difference", Money, nullable=False),
    Column("items", JSONB(none_as_null=True)),
    Column("ledger_entry_id", Uuid),
    Column("created_by", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
