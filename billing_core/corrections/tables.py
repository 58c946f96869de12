from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, Table, Text, Uuid
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

# a re-rate of a period (operator): its tenants, each posted once, and the per-event differences
rerate_runs = Table(
    "rerate_runs", metadata,
    Column("id", Uuid, primary_key=True),
    Column("idempotency_key", Text, nullable=False),
    Column("request_fingerprint", Text, nullable=False),
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("tenant_id", Text),
    Column("category", Text),
    Column("provider", Text),
    Column("model", Text),
    Column("unit", Text),
    Column("status", Text, nullable=False),
    Column("error", Text),
    Column("requested_by", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
)

rerate_tenants = Table(
    "rerate_tenants", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("run_id", Uuid, primary_key=True),
    Column("events", Integer, nullable=False),
    Column("charged_total", Money, nullable=False),
    Column("rerated_total", Money, nullable=False),
    Column("difference", Money, nullable=False),
    Column("ledger_entry_id", Uuid),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

rerate_events = Table(
    "rerate_events", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("run_id", Uuid, primary_key=True),
    Column("usage_event_id", Uuid, primary_key=True),
    Column("charged", Money, nullable=False),
    Column("rerated", Money, nullable=False),
    Column("difference", Money, nullable=False),
    # a sub-account's event: what its agency's price moved by with it (the operator's margins; migration 0052)
    Column("agency_difference", Money),
)
