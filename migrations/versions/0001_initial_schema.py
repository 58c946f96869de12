"""Initial schema: wallets, append-only ledger, usage events, price catalog, idempotency records.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE wallets (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL UNIQUE,
    currency text NOT NULL DEFAULT 'USD',
    current_balance numeric NOT NULL DEFAULT 0,
    reserved_balance numeric NOT NULL DEFAULT 0 CHECK (reserved_balance >= 0),
    overdraft_limit numeric NOT NULL DEFAULT 0 CHECK (overdraft_limit >= 0),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'blocked')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- the balance may only go below zero as far as the overdraft allows
    CHECK (current_balance - reserved_balance + overdraft_limit >= 0)
);

CREATE TABLE prices (
    id uuid PRIMARY KEY,
    tenant_id text,
    category text NOT NULL,
    provider text NOT NULL,
    model text NOT NULL,
    unit text NOT NULL,
    unit_price numeric NOT NULL CHECK (unit_price >= 0),
    currency text NOT NULL DEFAULT 'USD',
    description text,
    effective_from timestamptz NOT NULL,
    effective_to timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (effective_to IS NULL OR effective_to > effective_from)
);
CREATE UNIQUE INDEX prices_key_from ON prices
    (coalesce(tenant_id, ''), category, provider, model, unit, effective_from);
CREATE INDEX prices_lookup ON prices (category, provider, model, unit, tenant_id);

CREATE TABLE usage_events (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    task_id uuid NOT NULL UNIQUE,
    feature_key text NOT NULL,
    external_reference_id text,
    idempotency_key text NOT NULL,
    user_id text,
    status text NOT NULL CHECK (status IN ('pending', 'charged', 'rejected')),
    total_cost numeric,
    currency text NOT NULL DEFAULT 'USD',
    rejection_code text,
    rejection_reason text,
    rejection_details jsonb,
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    charged_at timestamptz,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    enqueue_count integer NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX usage_events_tenant_time ON usage_events (tenant_id, created_at DESC, id DESC);
CREATE INDEX usage_events_pending ON usage_events (enqueued_at) WHERE status = 'pending';

CREATE TABLE usage_event_items (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    usage_event_id uuid NOT NULL REFERENCES usage_events (id),
    position integer NOT NULL,
    category text NOT NULL,
    provider text NOT NULL,
    model text NOT NULL,
    unit text NOT NULL,
    quantity numeric NOT NULL CHECK (quantity >= 0),
    unit_price numeric,
    cost numeric,
    price_id uuid REFERENCES prices (id),
    UNIQUE (usage_event_id, position)
);

CREATE TABLE ledger_entries (
    id uuid PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    tenant_id text NOT NULL,
    wallet_id uuid NOT NULL REFERENCES wallets (id),
    entry_type text NOT NULL CHECK (entry_type IN ('topup', 'debit', 'refund', 'adjustment')),
    amount numeric NOT NULL,
    balance_before numeric NOT NULL,
    balance_after numeric NOT NULL,
    usage_event_id uuid REFERENCES usage_events (id),
    reference text,
    description text,
    idempotency_key text,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (balance_after = balance_before + amount),
    CHECK (entry_type <> 'debit' OR (amount <= 0 AND usage_event_id IS NOT NULL)),
    CHECK (entry_type <> 'topup' OR amount > 0)
);
-- the last line of defence against a double charge: one debit per usage event, ever
CREATE UNIQUE INDEX ledger_one_debit_per_event ON ledger_entries (tenant_id, usage_event_id)
    WHERE entry_type = 'debit';
CREATE INDEX ledger_wallet_seq ON ledger_entries (tenant_id, wallet_id, seq);
CREATE INDEX ledger_tenant_seq ON ledger_entries (tenant_id, seq DESC);

CREATE FUNCTION ledger_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER ledger_entries_no_update_delete BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_append_only();

CREATE TABLE idempotency_records (
    tenant_id text NOT NULL,
    idempotency_key text NOT NULL,
    operation text NOT NULL,
    request_fingerprint text NOT NULL,
    usage_event_id uuid REFERENCES usage_events (id) DEFERRABLE INITIALLY DEFERRED,
    ledger_entry_id uuid REFERENCES ledger_entries (id) DEFERRABLE INITIALLY DEFERRED,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, idempotency_key)
);
"""

DOWNGRADE = """
DROP TABLE idempotency_records;
DROP TRIGGER ledger_entries_no_truncate ON ledger_entries;
DROP TRIGGER ledger_entries_no_update_delete ON ledger_entries;
DROP TABLE ledger_entries;
DROP FUNCTION ledger_entries_append_only();
DROP TABLE usage_event_items;
DROP TABLE usage_events;
DROP TABLE prices;
DROP TABLE wallets;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
