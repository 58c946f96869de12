"""Credit lifecycle: credit grants and what each entry drew from them, reservations (holds),
binding quotes, per-feature budgets, Stripe events, flagged wallets.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
-- A clawback may take a balance below what the overdraft allows; the wallet is then flagged.
ALTER TABLE wallets DROP CONSTRAINT wallets_check;
ALTER TABLE wallets ADD COLUMN flagged_at timestamptz, ADD COLUMN flag_reason text;
ALTER TABLE wallets ADD CONSTRAINT wallets_spendable
    CHECK (current_balance - reserved_balance + overdraft_limit >= 0 OR flagged_at IS NOT NULL);

-- Ledger entries now also move holds: reserved_change is what an entry added to the reserved
-- balance, so the reserved balance equals the sum of reserved_change as the balance equals the sum
-- of amount. Adding columns rewrites no row; the append-only triggers stay.
ALTER TABLE ledger_entries
    ADD COLUMN reserved_change numeric NOT NULL DEFAULT 0,
    ADD COLUMN reservation_id uuid,
    ADD COLUMN grant_id uuid,
    ADD COLUMN related_entry_id uuid REFERENCES ledger_entries (id);
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_entry_type_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_entry_type_check CHECK (entry_type IN
    ('topup', 'debit', 'refund', 'adjustment', 'expiry', 'hold', 'hold_release'));
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_holds_move_no_money
    CHECK (entry_type NOT IN ('hold', 'hold_release') OR amount = 0);
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_refund_links
    CHECK (entry_type <> 'refund' OR (amount > 0 AND related_entry_id IS NOT NULL));
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_expiry_negative
    CHECK (entry_type <> 'expiry' OR amount < 0);
CREATE INDEX ledger_related ON ledger_entries (tenant_id, related_entry_id) WHERE related_entry_id IS NOT NULL;

-- Credits: the balance is the sum of the grants' remaining amounts. kind 'debt' is the one
-- negative grant per wallet that holds what an overdraft or a clawback took beyond the credits.
CREATE TABLE credit_grants (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    wallet_id uuid NOT NULL REFERENCES wallets (id),
    kind text NOT NULL CHECK (kind IN ('paid', 'promotional', 'debt')),
    amount numeric NOT NULL CHECK (amount >= 0),
    remaining numeric NOT NULL,
    priority integer NOT NULL CHECK (priority BETWEEN 0 AND 100),
    expires_at timestamptz,
    expired_at timestamptz,
    source text NOT NULL,
    reference text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (kind = 'debt' OR (remaining >= 0 AND remaining <= amount)),
    CHECK (kind <> 'debt' OR (remaining <= 0 AND expires_at IS NULL))
);
CREATE INDEX credit_grants_live ON credit_grants (tenant_id, wallet_id) WHERE remaining <> 0;
CREATE INDEX credit_grants_due ON credit_grants (expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;
CREATE UNIQUE INDEX credit_grants_one_debt ON credit_grants (tenant_id, wallet_id) WHERE kind = 'debt';
-- a Stripe payment's grant, found from its refunds and disputes (which may not name the tenant)
CREATE INDEX credit_grants_stripe_payment ON credit_grants (reference) WHERE source = 'stripe';

-- Which grants each ledger entry drew from (negative) or credited (positive); append-only.
CREATE TABLE grant_draws (
    tenant_id text NOT NULL,
    ledger_entry_id uuid NOT NULL REFERENCES ledger_entries (id),
    grant_id uuid NOT NULL REFERENCES credit_grants (id),
    amount numeric NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (tenant_id, ledger_entry_id, grant_id)
);
CREATE INDEX grant_draws_grant ON grant_draws (tenant_id, grant_id);
CREATE TRIGGER grant_draws_no_update_delete BEFORE UPDATE OR DELETE ON grant_draws
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only();

-- Balances from before grants existed become one paid grant (or the debt) per wallet.
INSERT INTO credit_grants (id, tenant_id, wallet_id, kind, amount, remaining, priority, source, created_at)
SELECT gen_random_uuid(), tenant_id, id, CASE WHEN current_balance > 0 THEN 'paid' ELSE 'debt' END,
       greatest(current_balance, 0), current_balance, 50, 'migration', now()
FROM wallets WHERE current_balance <> 0;

CREATE TABLE quotes (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    lines jsonb NOT NULL,          -- [{category, provider, model, unit, quantity, unitPrice, priceId}]
    total_cost numeric NOT NULL,
    currency text NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX quotes_expiry ON quotes (expires_at);

CREATE TABLE reservations (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    wallet_id uuid NOT NULL REFERENCES wallets (id),
    feature_key text NOT NULL,
    external_reference_id text,
    quote_id uuid REFERENCES quotes (id),
    status text NOT NULL CHECK (status IN ('active', 'settled', 'released', 'expired')),
    amount numeric NOT NULL CHECK (amount >= 0),
    settled_amount numeric,
    usage_event_id uuid REFERENCES usage_events (id),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    closed_at timestamptz,
    CHECK ((status = 'settled') = (usage_event_id IS NOT NULL AND settled_amount IS NOT NULL))
);
CREATE INDEX reservations_tenant ON reservations (tenant_id, created_at DESC, id DESC);
CREATE INDEX reservations_active ON reservations (tenant_id, feature_key) WHERE status = 'active';
CREATE INDEX reservations_due ON reservations (expires_at) WHERE status = 'active';
-- a usage event settles at most one hold, and a hold is settled by at most one debit
CREATE UNIQUE INDEX reservations_one_settlement ON reservations (tenant_id, usage_event_id)
    WHERE usage_event_id IS NOT NULL;
CREATE UNIQUE INDEX ledger_one_settlement_per_hold ON ledger_entries (tenant_id, reservation_id)
    WHERE entry_type = 'debit' AND reservation_id IS NOT NULL;

ALTER TABLE usage_events ADD COLUMN reservation_id uuid REFERENCES reservations (id),
                         ADD COLUMN quote_id uuid REFERENCES quotes (id);

CREATE TABLE budgets (
    tenant_id text NOT NULL,
    feature_key text NOT NULL,
    spend_limit numeric NOT NULL CHECK (spend_limit >= 0),
    period text NOT NULL CHECK (period IN ('day', 'month')),
    action text NOT NULL CHECK (action IN ('reject', 'alert')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, feature_key)
);

-- Spend per budgeted feature and period, moved in the same transaction as each debit or refund.
CREATE TABLE budget_spend (
    tenant_id text NOT NULL,
    feature_key text NOT NULL,
    period text NOT NULL,
    period_start timestamptz NOT NULL,
    spent numeric NOT NULL,
    alerted_at timestamptz,  -- an `alert` budget's one budget.exceeded notification of the period
    PRIMARY KEY (tenant_id, feature_key, period, period_start)
);

CREATE TABLE stripe_events (
    id text PRIMARY KEY,            -- Stripe's event id: a redelivered event is the same row
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    tenant_id text,
    status text NOT NULL CHECK (status IN ('received', 'processed', 'ignored', 'waiting', 'failed')),
    detail text,
    received_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz
);
CREATE INDEX stripe_events_waiting ON stripe_events (status) WHERE status IN ('received', 'waiting');

ALTER TABLE idempotency_records ADD COLUMN resource_id uuid;
"""

DOWNGRADE = """
ALTER TABLE idempotency_records DROP COLUMN resource_id;
DROP TABLE stripe_events;
DROP TABLE budget_spend;
DROP TABLE budgets;
ALTER TABLE usage_events DROP COLUMN quote_id, DROP COLUMN reservation_id;
DROP TABLE reservations;
DROP TABLE quotes;
DROP TABLE grant_draws;
DROP TABLE credit_grants;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_expiry_negative;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_refund_links;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_holds_move_no_money;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_entry_type_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_entry_type_check
    CHECK (entry_type IN ('topup', 'debit', 'refund', 'adjustment'));
ALTER TABLE ledger_entries DROP COLUMN related_entry_id, DROP COLUMN grant_id,
    DROP COLUMN reservation_id, DROP COLUMN reserved_change;
ALTER TABLE wallets DROP CONSTRAINT wallets_spendable;
ALTER TABLE wallets DROP COLUMN flag_reason, DROP COLUMN flagged_at;
ALTER TABLE wallets ADD CONSTRAINT wallets_check
    CHECK (current_balance - reserved_balance + overdraft_limit >= 0);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
