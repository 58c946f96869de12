"""Corrections (issue 20): late usage (usage_events.occurred_at), corrections of one usage event,
re-rate runs with their per-event differences, and credit/debit notes.

Revision ID: 0030
Revises: 0019
Create Date: 2027-01-20
"""
from alembic import op

revision = "0030"
down_revision = "0019"
branch_labels = None
depends_on = None

UPGRADE = """
-- when the usage happened (the caller's occurredAt, else its acceptance): what prices, budgets and
-- bills it. Existing events occurred when they were accepted.
ALTER TABLE usage_events ADD COLUMN occurred_at timestamptz;
UPDATE usage_events SET occurred_at = created_at;
ALTER TABLE usage_events ALTER COLUMN occurred_at SET NOT NULL;
CREATE INDEX usage_events_tenant_occurred ON usage_events (tenant_id, occurred_at);
-- writers that do not name it (bulk loads, the bench) record usage that occurred when accepted
CREATE FUNCTION usage_events_occurred_default() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.occurred_at := coalesce(NEW.occurred_at, NEW.created_at);
    RETURN NEW;
END $$;
CREATE TRIGGER usage_events_occurred_default BEFORE INSERT ON usage_events
    FOR EACH ROW WHEN (NEW.occurred_at IS NULL) EXECUTE FUNCTION usage_events_occurred_default();

-- a correction of one usage event moves money in one `correction` entry tied to the event and its debit
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_entry_type_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_entry_type_check CHECK (entry_type IN
    ('topup', 'debit', 'refund', 'adjustment', 'expiry', 'hold', 'hold_release', 'correction'));
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_correction_links
    CHECK (entry_type <> 'correction' OR (usage_event_id IS NOT NULL AND related_entry_id IS NOT NULL));
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_line_type_check;
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_line_type_check
    CHECK (line_type IN ('usage', 'topup', 'refund', 'adjustment', 'expiry', 'correction'));

-- the correction chain of a usage event: never an edit of the event, its items or its debit
CREATE TABLE usage_corrections (
    id uuid NOT NULL,
    tenant_id text NOT NULL,
    usage_event_id uuid NOT NULL,      -- the usage event (tenant_id, usage_event_id)
    action text NOT NULL CHECK (action IN ('void', 'amend')),
    reason text NOT NULL,
    idempotency_key text NOT NULL,
    request_fingerprint text NOT NULL,
    cost_before numeric NOT NULL,       -- the event's priced net cost before this correction
    cost_after numeric NOT NULL,        -- after it (0 for a void)
    difference numeric NOT NULL,        -- what the balance moved: positive credited back
    items jsonb,                        -- an amend's items as re-priced at the event's occurredAt
    ledger_entry_id uuid,              -- its correction entry; NULL when nothing moved
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX usage_corrections_event ON usage_corrections (tenant_id, usage_event_id, created_at);

-- a correction of a finalized month issues a credit (or debit) note in the issuer's series: the
-- invoice stays as it was, the note names it and the lines it corrects
ALTER TABLE document_numbers DROP CONSTRAINT document_numbers_document_type_check;
ALTER TABLE document_numbers ADD CONSTRAINT document_numbers_document_type_check
    CHECK (document_type IN ('invoice', 'receipt', 'credit_note', 'debit_note'));
CREATE TABLE credit_notes (
    tenant_id text NOT NULL,
    id uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('credit_note', 'debit_note')),
    number text NOT NULL,
    issuer_id text NOT NULL REFERENCES issuers (id),
    issuer jsonb NOT NULL,
    customer jsonb,
    corrects_invoice_id uuid NOT NULL,
    corrects_invoice_number text,
    corrects_period date NOT NULL,
    usage_correction_id uuid NOT NULL,  -- the correction (or re-rate) it documents
    usage_event_id uuid,
    ledger_entry_id uuid NOT NULL,
    currency text NOT NULL,
    minor_unit integer NOT NULL,
    amount numeric NOT NULL,            -- signed as the correction's difference: positive credited back
    reason text NOT NULL,
    lines jsonb NOT NULL,
    issued_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, usage_correction_id),
    CHECK ((kind = 'credit_note') = (amount > 0))
);
CREATE INDEX credit_notes_issued ON credit_notes (tenant_id, issued_at DESC, id DESC);

-- a catalog correction: a price row from a past start that ranks above the rows it corrects
ALTER TABLE prices ADD COLUMN revision bigint NOT NULL DEFAULT 0;
DROP INDEX prices_key_from;
CREATE UNIQUE INDEX prices_key_from ON prices
    (coalesce(tenant_id, ''), category, provider, model, unit, effective_from, revision);
CREATE TABLE catalog_corrections (
    id uuid PRIMARY KEY,
    tenant_id text,                     -- the override's tenant; NULL: the global catalog
    price_id uuid NOT NULL REFERENCES prices (id),
    category text NOT NULL,
    provider text NOT NULL,
    model text NOT NULL,
    unit text NOT NULL,
    effective_from timestamptz NOT NULL,
    reason text NOT NULL,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- a re-rate of a period: one run (operator), per tenant one correction entry, per event its difference
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_correction_links;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_correction_links
    CHECK (entry_type <> 'correction' OR (usage_event_id IS NULL) = (related_entry_id IS NULL));
CREATE TABLE rerate_runs (
    id uuid PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    request_fingerprint text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    tenant_id text,                     -- the filter: one tenant, or NULL for every tenant
    category text,
    provider text,
    model text,
    unit text,
    status text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    error text,
    requested_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE TABLE rerate_tenants (
    tenant_id text NOT NULL,
    run_id uuid NOT NULL,
    events integer NOT NULL,
    charged_total numeric NOT NULL,
    rerated_total numeric NOT NULL,
    difference numeric NOT NULL,        -- charged - re-rated: positive credited back
    ledger_entry_id uuid,               -- NULL: nothing to post
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, run_id)     -- each tenant of a run is posted once
);
CREATE TABLE rerate_events (
    tenant_id text NOT NULL,
    run_id uuid NOT NULL,
    usage_event_id uuid NOT NULL,
    charged numeric NOT NULL,
    rerated numeric NOT NULL,
    difference numeric NOT NULL,
    PRIMARY KEY (tenant_id, run_id, usage_event_id)
);
CREATE INDEX rerate_events_event ON rerate_events (tenant_id, usage_event_id);
ALTER TABLE notifications DROP CONSTRAINT notifications_event_type_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_type_check CHECK (event_type IN
    ('balance.low', 'balance.depleted', 'invoice.finalized', 'budget.exceeded', 'reconciliation.mismatch',
     'auto_topup.failed', 'auto_topup.capped', 'wallet.in_debt', 'wallet.debt_repaid', 'usage.corrected'));
CREATE TRIGGER credit_notes_no_update_delete BEFORE UPDATE OR DELETE ON credit_notes
    FOR EACH ROW EXECUTE FUNCTION invoices_immutable();
"""

DOWNGRADE = """
DELETE FROM notification_attempts WHERE notification_id IN
    (SELECT id FROM notifications WHERE event_type = 'usage.corrected');
DELETE FROM notifications WHERE event_type = 'usage.corrected';
ALTER TABLE notifications DROP CONSTRAINT notifications_event_type_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_type_check CHECK (event_type IN
    ('balance.low', 'balance.depleted', 'invoice.finalized', 'budget.exceeded', 'reconciliation.mismatch',
     'auto_topup.failed', 'auto_topup.capped', 'wallet.in_debt', 'wallet.debt_repaid'));
DROP TABLE rerate_events;
DROP TABLE rerate_tenants;
DROP TABLE rerate_runs;
DROP TABLE catalog_corrections;
DELETE FROM prices WHERE revision > 0;
DROP INDEX prices_key_from;
CREATE UNIQUE INDEX prices_key_from ON prices (coalesce(tenant_id, ''), category, provider, model, unit, effective_from);
ALTER TABLE prices DROP COLUMN revision;
DROP TABLE credit_notes;
DELETE FROM document_numbers WHERE document_type = 'debit_note';
ALTER TABLE document_numbers DROP CONSTRAINT document_numbers_document_type_check;
ALTER TABLE document_numbers ADD CONSTRAINT document_numbers_document_type_check
    CHECK (document_type IN ('invoice', 'receipt', 'credit_note'));
DROP TABLE usage_corrections;
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_line_type_check;
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_line_type_check
    CHECK (line_type IN ('usage', 'topup', 'refund', 'adjustment', 'expiry'));
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_correction_links;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_entry_type_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_entry_type_check CHECK (entry_type IN
    ('topup', 'debit', 'refund', 'adjustment', 'expiry', 'hold', 'hold_release'));
DROP TRIGGER usage_events_occurred_default ON usage_events;
DROP FUNCTION usage_events_occurred_default();
ALTER TABLE usage_events DROP COLUMN occurred_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
