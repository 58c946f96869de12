from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

from billing_core.db import Money, metadata

# A tenant's call plan, set by the operator: no row means no limits and the default policy.
call_plans = Table(
    "call_plans", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("max_concurrent_calls", Integer),  # NULL: unlimited
    Column("burst_limit", Integer),  # NULL: no burst slots
    Column("burst_multiplier", Money, nullable=False),
    Column("call_grace_limit", Money),  # NULL: settlements may go into debt without limit
    Column("settlement_policy", Text, nullable=False),  # grace | strict
    Column("feature_limits", JSONB, nullable=False),  # {"featureKey": max concurrent calls}
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
