from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

from billing_core.db import Money, metadata

wallets = Table(
    "wallets", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("currency", Text, nullable=False),
    Column("current_balance", Money, nullable=False),
    Column("reserved_balance", Money, nullable=False),
    Column("overdraft_limit", Money, nullable=False),
    Column("status", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("flagged_at", DateTime(timezone=True)),  # set by a clawback that took the balance below zero
    Column("flag_reason", Text),
    Column("in_debt_since", DateTime(timezone=True)),  # a call settled past what the wallet could spend
)


ledger_entries = Table(
    "ledger_entries", metadata,
    Column("id", Uuid, primary_key=True),
    Column("seq", BigInteger, nullable=False),  # identity: order of entries within a wallet
    Column("tenant_id", Text, nullable=False),
    Column("wallet_id", Uuid, ForeignKey("wallets.id"), nullable=False),
    Column("entry_type", Text, nullable=False),
    Column("amount", Money, nullable=False),
    Column("balance_before", Money, nullable=False),
    Column("balance_after", Money, nullable=False),
    Column("usage_event_id", Uuid, ForeignKey("usage_events.id")),
    Column("reference", Text),
    Column("description", Text),
    Column("idempotency_key", Text),
    Column("created_by", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("reserved_change", Money, nullable=False),  # what the entry added to the reserved balance
    Column("reservation_id", Uuid),
    Column("grant_id", Uuid),  # the grant a top-up created or an expiry ended
    Column("related_entry_id", Uuid),  # a refund's debit, a clawback's top-up
    Column("sub_account_event_id", Uuid),  # an agency's debit for one of its sub-accounts' usage events
    # a sub-account's refund or correction: what its agency's price moved by with it (operators' margins)
    Column("agency_amount", Money),
)


credit_grants = Table(
    "credit_grants", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("wallet_id", Uuid, ForeignKey("wallets.id"), nullable=False),
    Column("kind", Text, nullable=False),  # paid | promotional | debt
    Column("amount", Money, nullable=False),
    Column("remaining", Money, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("expired_at", DateTime(timezone=True)),
    Column("source", Text, nullable=False),
    Column("reference", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


grant_draws = Table(
    "grant_draws", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("ledger_entry_id", Uuid, ForeignKey("ledger_entries.id"), primary_key=True),
    Column("grant_id", Uuid, ForeignKey("credit_grants.id"), primary_key=True),
    Column("amount", Money, nullable=False),
)


reconciliation_runs = Table(
    "reconciliation_runs", metadata,
    Column("id", Uuid, primary_key=True),
    Column("tenant_id", Text),  # NULL: every wallet
    Column("slot", DateTime(timezone=True), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("wallets_checked", Integer, nullable=False),
    Column("mismatches", JSONB, nullable=False),
    Column("pending_events", Integer, nullable=False),
    Column("stuck_pending_events", Integer, nullable=False),
    Column("oldest_pending_seconds", Numeric, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)




allocations = Table(
    "allocations", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("amount", Numeric(asdecimal=True), nullable=False),
    Column("kind", Text, nullable=False),
    Column("period", Text, nullable=False),
    Column("expires_at_period_end", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


allocation_grants = Table(
    "allocation_grants", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("period_start", DateTime(timezone=True), primary_key=True),
    Column("grant_id", Uuid, nullable=False),
    Column("amount", Numeric(asdecimal=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
