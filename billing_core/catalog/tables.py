from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

from billing_core.db import Money, metadata

prices = Table(
    "prices", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text),  # NULL: the global catalog; a tenant's row overrides it
    Column("category", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("unit", Text, nullable=False),
    Column("unit_price", Money),  # NULL for package and graduated prices
    Column("currency", Text, nullable=False),
    Column("description", Text),
    Column("effective_from", DateTime(timezone=True), nullable=False),
    Column("effective_to", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # pricing models (migration 0010): unit (unit_price), package or graduated (tiers)
    Column("pricing_model", Text, nullable=False),
    Column("package_size", Money),
    Column("package_price", Money),
    Column("minimum_quantity", Money),
    Column("tiers", JSONB(none_as_null=True)),
    # a catalog correction's rows rank above the rows they correct, wherever both are in force (0030)
    Column("revision", BigInteger, nullable=False, server_default="0"),
)

# prices entered with an effectiveFrom in the past: the only way to change what was in force, with why
catalog_corrections = Table(
    "catalog_corrections", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text),  # the override's tenant; NULL: the global catalog
    Column("price_id", Uuid, nullable=False),
    Column("category", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("unit", Text, nullable=False),
    Column("effective_from", DateTime(timezone=True), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_by", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


catalog_revision = Table(
    "catalog_revision", metadata,
    Column("singleton", Boolean, primary_key=True),
    Column("revision", BigInteger, nullable=False),
)


price_adjustments = Table(
    "price_adjustments", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, primary_key=True),
    Column("category", Text),  # NULL: any
    Column("provider", Text),
    Column("model", Text),
    Column("unit", Text),
    Column("multiplier", Money, nullable=False),
    Column("effective_from", DateTime(timezone=True), nullable=False),
    Column("effective_to", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


provider_costs = Table(  # operators' table: no tenant
    "provider_costs", metadata,
    Column("id", Uuid, primary_key=True),
    Column("category", Text, nullable=False),
    Column("provider", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("unit", Text, nullable=False),
    Column("unit_cost", Money, nullable=False),
    Column("currency", Text, nullable=False),
    Column("effective_from", DateTime(timezone=True), nullable=False),
    Column("effective_to", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


tier_positions = Table(
    "tier_positions", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("category", Text, primary_key=True),
    Column("provider", Text, primary_key=True),
    Column("model", Text, primary_key=True),
    Column("unit", Text, primary_key=True),
    Column("period_start", DateTime(timezone=True), primary_key=True),
    Column("billed_quantity", Money, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
