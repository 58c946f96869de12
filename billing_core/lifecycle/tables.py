from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

from billing_core.db import Money, metadata

quotes = Table(
    "quotes", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("lines", JSONB, nullable=False),
    Column("total_cost", Money, nullable=False),
    Column("currency", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


reservations = Table(
    "reservations", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("wallet_id", Uuid, ForeignKey("wallets.id"), nullable=False),
    Column("feature_key", Text, nullable=False),
    Column("external_reference_id", Text),
    Column("quote_id", Uuid),
    Column("status", Text, nullable=False),
    Column("amount", Money, nullable=False),
    Column("settled_amount", Money),
    Column("usage_event_id", Uuid),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True)),
    Column("burst_multiplier", Money),  # set on a call admitted above its plan's base limit (calls/)
    # on an agency's hold backing an agency-funded sub-account's hold (same id): that sub-account
    Column("sub_account_id", Text),
    # on an agency-funded sub-account's hold: its agency, whose wallet sets it aside (this one does not)
    Column("agency_id", Text),
)


budgets = Table(
    "budgets", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("feature_key", Text, primary_key=True),
    Column("spend_limit", Money, nullable=False),
    Column("period", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


budget_spend = Table(
    "budget_spend", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("feature_key", Text, primary_key=True),
    Column("period", Text, primary_key=True),
    Column("period_start", DateTime(timezone=True), primary_key=True),
    Column("spent", Money, nullable=False),
    Column("alerted_at", DateTime(timezone=True)),
)
