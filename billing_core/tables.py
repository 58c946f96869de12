"""Table definitions used by queries. The schema itself is created by the Alembic migrations."""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# Numeric without precision: PostgreSQL NUMERIC stores every digit it is given, so nothing rounds.
Money = Numeric(asdecimal=True)

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
)

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
)

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
)

idempotency_records = Table(
    "idempotency_records", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("idempotency_key", Text, primary_key=True),
    Column("operation", Text, nullable=False),
    Column("request_fingerprint", Text, nullable=False),
    Column("usage_event_id", Uuid),
    Column("ledger_entry_id", Uuid),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("resource_id", Uuid),  # a reservation, refund's entry or other resource the request made
)

catalog_revision = Table(
    "catalog_revision", metadata,
    Column("singleton", Boolean, primary_key=True),
    Column("revision", BigInteger, nullable=False),
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

# --- pricing models, costs and margins (migration 0010) ---------------------------------------------

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

# --- pages: portal and console sessions, and what was changed through them (migration 0012) -------

portal_sessions = Table(
    "portal_sessions", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("id", Uuid, primary_key=True),
    Column("token_hash", Text, nullable=False),  # SHA-256 of the link's secret; the secret is never stored
    Column("session_hash", Text),  # SHA-256 of the cookie's secret, drawn when the link is opened
    Column("opened_at", DateTime(timezone=True)),  # the link's one opening
    Column("created_by", Text),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

console_sessions = Table(  # operators only: no tenant
    "console_sessions", metadata,
    Column("id", Uuid, primary_key=True),
    Column("token_hash", Text, nullable=False),
    Column("session_hash", Text),
    Column("opened_at", DateTime(timezone=True)),
    Column("created_by", Text),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

page_actions = Table(
    "page_actions", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("id", Uuid, primary_key=True),
    Column("surface", Text, nullable=False),
    Column("session_id", Uuid, nullable=False),
    Column("action", Text, nullable=False),
    Column("request", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
