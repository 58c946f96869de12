from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    Numeric,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

from billing_core.db import metadata

notifications = Table(
    "notifications", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text),  # NULL: an operator event
    Column("event_type", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("channel", Text, nullable=False),
    Column("destination", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("enqueued_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True)),
    Column("lease_token", Uuid),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    Column("failed_at", DateTime(timezone=True)),
)


notification_attempts = Table(
    "notification_attempts", metadata,
    Column("tenant_id", Text),
    Column("notification_id", Uuid, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("duration_ms", Integer),
    Column("outcome", Text, nullable=False),
    Column("http_status", Integer),
    Column("smtp_result", Text),
    Column("error", Text),
)




alert_settings = Table(
    "alert_settings", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("webhook_url", Text),
    Column("webhook_secret", Text, nullable=False),
    Column("email", Text),
    Column("evaluated_seq", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


alert_states = Table(
    "alert_states", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("threshold", Numeric(asdecimal=True), primary_key=True),
    Column("armed", Boolean, nullable=False),
    Column("fired_count", Integer, nullable=False),
    Column("last_fired_at", DateTime(timezone=True)),
    Column("last_rearmed_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
