from __future__ import annotations

from sqlalchemy import Column, DateTime, Table, Text, Uuid

from billing_core.db import Money, metadata

# Every table here is keyed by the agency's tenant_id: an agency's tree lives together.
agencies = Table(
    "agencies", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

sub_accounts = Table(
    "sub_accounts", metadata,
    Column("tenant_id", Text, primary_key=True),  # the agency
    Column("sub_account_id", Text, primary_key=True),  # any tenant: `<agencyId>:<name>` or one attached
    Column("funding", Text, nullable=False),  # prepaid | agency
    Column("spend_cap", Money),  # monthly (UTC), at resale prices; agency funding only
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# the one table keyed by the sub-account's own tenant_id: which agency it belongs to (at most one), so
# any tenant can be a sub-account and its agency is found by one read on its own shard
agency_members = Table(
    "agency_members", metadata,
    Column("tenant_id", Text, primary_key=True),  # the sub-account
    Column("agency_id", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

resale_multipliers = Table(
    "resale_multipliers", metadata,
    Column("tenant_id", Text, primary_key=True),  # the agency
    Column("id", Uuid, primary_key=True),
    Column("sub_account_id", Text),  # NULL: every sub-account
    Column("category", Text),
    Column("provider", Text),
    Column("model", Text),
    Column("unit", Text),
    Column("multiplier", Money, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

agency_charges = Table(
    "agency_charges", metadata,
    Column("tenant_id", Text, primary_key=True),  # the agency
    Column("usage_event_id", Uuid, primary_key=True),
    Column("sub_account_id", Text, nullable=False),
    Column("feature_key", Text, nullable=False),
    Column("resale_amount", Money, nullable=False),  # what the sub-account was charged
    Column("agency_amount", Money, nullable=False),  # what LAD charged the agency
    Column("ledger_entry_id", Uuid, nullable=False),  # the agency's debit
    # what refunds gave back, and what corrections gave back (positive) or took more (negative), at each level
    Column("resale_refunded", Money, nullable=False, server_default="0"),
    Column("agency_refunded", Money, nullable=False, server_default="0"),
    Column("resale_corrected", Money, nullable=False, server_default="0"),
    Column("agency_corrected", Money, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # the sub-account's event's times (migration 0050): the agency's invoice reads them here, not from the
    # event, which is another tenant's row (another shard under Citus)
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("charged_at", DateTime(timezone=True), nullable=False),
)
