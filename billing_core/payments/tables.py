from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Integer,
    Numeric,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

from billing_core.db import metadata

stripe_events = Table(
    "stripe_events", metadata,
    Column("id", Text, primary_key=True),
    Column("event_type", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("tenant_id", Text),
    Column("status", Text, nullable=False),
    Column("detail", Text),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("processed_at", DateTime(timezone=True)),
)




auto_topup_attempts = Table(
    "auto_topup_attempts", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("id", Uuid, primary_key=True),
    Column("status", Text, nullable=False),
    Column("amount", Numeric(asdecimal=True), nullable=False),
    Column("available_before", Numeric(asdecimal=True), nullable=False),
    Column("threshold", Numeric(asdecimal=True), nullable=False),
    Column("month", Date, nullable=False),
    Column("payment_intent_id", Text),
    Column("failure_code", Text),
    Column("failure_message", Text),
    Column("stripe_requests", Integer, nullable=False),
    Column("next_try_at", DateTime(timezone=True), nullable=False),
    Column("grant_id", Uuid),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
)




auto_topup_settings = Table(
    "auto_topup_settings", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("threshold", Numeric(asdecimal=True), nullable=False),
    Column("recharge_to", Numeric(asdecimal=True)),
    Column("amount", Numeric(asdecimal=True)),
    Column("stripe_customer_id", Text, nullable=False),
    Column("stripe_payment_method_id", Text, nullable=False),
    Column("max_per_month", Numeric(asdecimal=True)),
    Column("cooldown_seconds", Integer, nullable=False),
    Column("disabled_reason", Text),
    Column("disabled_at", DateTime(timezone=True)),
    # when Stripe last confirmed the customer and payment method are the tenant's own (NULL: a rule saved
    # before migration 0015, to be checked by the minute scan)
    Column("verified_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)




stripe_customers = Table(
    "stripe_customers", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("stripe_customer_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
