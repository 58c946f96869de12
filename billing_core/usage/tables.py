from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

from billing_core.db import Money, metadata

usage_events = Table(
    "usage_events", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("task_id", Uuid, nullable=False),
    Column("feature_key", Text, nullable=False),
    Column("external_reference_id", Text),
    Column("idempotency_key", Text, nullable=False),
    Column("user_id", Text),
    Column("status", Text, nullable=False),
    Column("total_cost", Money),
    Column("currency", Text, nullable=False),
    Column("rejection_code", Text),
    Column("rejection_reason", Text),
    Column("rejection_details", JSONB),
    Column("metadata", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("charged_at", DateTime(timezone=True)),
    Column("enqueued_at", DateTime(timezone=True), nullable=False),
    Column("enqueue_count", Integer, nullable=False),
    Column("seq", BigInteger, nullable=False),  # identity: arrival order
    Column("reservation_id", Uuid),  # the hold this charge settles
    Column("quote_id", Uuid),  # the binding quote it is priced by
    Column("request_id", Text),  # the HTTP request that accepted it: one grep follows a charge
    Column("occurred_at", DateTime(timezone=True), nullable=False),  # when it happened: prices, budgets, bills it
)


usage_event_items = Table(
    "usage_event_items", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("usage_event_id", Uuid, ForeignKey("usage_events.id"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("category", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("unit", Text, nullable=False),
    Column("quantity", Money, nullable=False),
    Column("unit_price", Money),
    Column("cost", Money),
    Column("price_id", Uuid, ForeignKey("prices.id")),
    Column("pricing", JSONB(none_as_null=True)),  # how it was priced when more than quantity x unit price (0010)
    Column("unit_cost", Money),  # the provider's unit cost in force at the event's time; NULL: uncosted
    Column("provider_cost", Money),  # quantity x unit_cost
    Column("agency_cost", Money),  # a sub-account's item: what LAD charged its agency for it (operators only)
)
