"""Monthly invoices and their lines, the record of each rollup run, and half-even rounding.

An invoice covers one tenant's ledger for one calendar month (UTC). It is written once, finalized,
by the rollup (billing_core.invoicing.invoices) and never changed: UPDATE, DELETE and TRUNCATE are refused by
triggers, as for the ledger, and lines cannot be added to an invoice finalized by an earlier
transaction. Each invoice row must reconcile: opening + credits - usage = closing, exactly (a CHECK).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
-- Rounding to a currency's minor unit, half to even. PostgreSQL's round(numeric, int) rounds half
-- away from zero; this one gives 0.125 -> 0.12, 0.135 -> 0.14, -0.125 -> -0.12 (an inlinable SQL function).
CREATE FUNCTION round_half_even(value numeric, places integer) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN abs(value - trunc(value, places)) * power(10::numeric, places) = 0.5
             AND mod(trunc(value * power(10::numeric, places)), 2) = 0
        THEN trunc(value, places)
        ELSE round(value, places)
    END
$$;

CREATE TABLE invoices (
    id uuid PRIMARY KEY,
    tenant_id text NOT NULL,
    wallet_id uuid NOT NULL REFERENCES wallets (id),
    period date NOT NULL CHECK (extract(day FROM period) = 1),   -- the month: its first day
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    status text NOT NULL CHECK (status IN ('draft', 'finalized')),
    currency text NOT NULL,
    minor_unit integer NOT NULL CHECK (minor_unit BETWEEN 0 AND 4),
    -- the ledger chain this invoice covers: entries first_seq..last_seq of the wallet (money entries)
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    entry_count bigint NOT NULL,
    opening_balance numeric NOT NULL,     -- balance_before of the first entry = balance after the last one before
    closing_balance numeric NOT NULL,     -- balance_after of the last entry
    usage_exact numeric NOT NULL,         -- the usage lines' exact amounts = what the debits took
    total_usage numeric NOT NULL,         -- the usage lines' rounded amounts
    rounding_difference numeric NOT NULL, -- total_usage - usage_exact
    topups numeric NOT NULL,
    refunds numeric NOT NULL,
    adjustments numeric NOT NULL,         -- signed
    expiries numeric NOT NULL,            -- negative
    total_credits numeric NOT NULL,       -- topups + refunds + adjustments + expiries
    usage_line_count integer NOT NULL,
    credit_line_count integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    finalized_at timestamptz,
    UNIQUE (tenant_id, period),
    CHECK (period_end > period_start),
    CHECK ((status = 'finalized') = (finalized_at IS NOT NULL)),
    CONSTRAINT invoices_reconcile CHECK (opening_balance + total_credits - usage_exact = closing_balance),
    CONSTRAINT invoices_credits_add_up CHECK (total_credits = topups + refunds + adjustments + expiries),
    CONSTRAINT invoices_rounding_shown CHECK (total_usage - usage_exact = rounding_difference)
);
CREATE INDEX invoices_period ON invoices (period);

CREATE TABLE invoice_lines (
    invoice_id uuid NOT NULL REFERENCES invoices (id),
    tenant_id text NOT NULL,
    line_no integer NOT NULL,
    line_type text NOT NULL CHECK (line_type IN ('usage', 'topup', 'refund', 'adjustment', 'expiry')),
    feature_key text,
    category text,
    provider text,
    model text,
    unit text,
    unit_price numeric,
    -- a usage event accepted before the period and charged in it (e.g. pending through an outage)
    prior_period boolean NOT NULL DEFAULT false,
    credit_kind text,          -- the grant kind (paid, promotional) a top-up, adjustment or expiry moved
    description text,
    item_count bigint NOT NULL, -- usage: items; credits: ledger entries
    quantity numeric,
    exact_amount numeric NOT NULL,
    amount numeric NOT NULL,
    rounding_difference numeric NOT NULL,
    PRIMARY KEY (invoice_id, line_no),
    CHECK (amount - exact_amount = rounding_difference),
    CHECK (line_type = 'usage' OR rounding_difference = 0)
);
CREATE INDEX invoice_lines_tenant ON invoice_lines (tenant_id, invoice_id);

-- Every rollup run, scheduled or on demand, including those that found nothing left to invoice.
-- An operators' record across tenants (tenant_id is the scope of an on-demand run, NULL for all).
CREATE TABLE invoice_runs (
    id uuid PRIMARY KEY,
    period date NOT NULL,
    tenant_id text,
    task_id text,
    invoices_created integer NOT NULL,
    lines_created integer NOT NULL,
    -- tenants left without an invoice because their ledger does not reconcile, and why
    refused jsonb NOT NULL DEFAULT '[]'::jsonb,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX invoice_runs_period ON invoice_runs (period, started_at DESC);
CREATE INDEX invoice_runs_task ON invoice_runs (task_id) WHERE task_id IS NOT NULL;

CREATE FUNCTION invoices_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % refused: finalized invoices are immutable', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER invoices_no_update_delete BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW WHEN (OLD.status = 'finalized') EXECUTE FUNCTION invoices_immutable();
CREATE TRIGGER invoices_no_truncate BEFORE TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_immutable();
CREATE TRIGGER invoice_lines_no_update_delete BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION invoices_immutable();
CREATE TRIGGER invoice_lines_no_truncate BEFORE TRUNCATE ON invoice_lines
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_immutable();

-- Lines join a finalized invoice only in the transaction that wrote it (one check per statement).
CREATE FUNCTION invoice_lines_only_with_their_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_lines l JOIN invoices i ON i.id = l.invoice_id
               WHERE i.status = 'finalized' AND i.xmin <> pg_current_xact_id()::xid) THEN
        RAISE EXCEPTION 'INSERT on invoice_lines refused: finalized invoices are immutable'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER invoice_lines_no_late_lines AFTER INSERT ON invoice_lines
    REFERENCING NEW TABLE AS new_lines
    FOR EACH STATEMENT EXECUTE FUNCTION invoice_lines_only_with_their_invoice();

-- The rollup reads a month of the ledger by time: a BRIN index (the table is append-only, so time
-- follows the physical order) costs a few pages and almost nothing per insert.
CREATE INDEX ledger_created_brin ON ledger_entries USING brin (created_at) WITH (pages_per_range = 32);
-- ... and its credits (top-ups, refunds, adjustments, expiries: few rows) without reading its debits
CREATE INDEX ledger_credits_time ON ledger_entries (created_at)
    WHERE entry_type IN ('topup', 'refund', 'adjustment', 'expiry');
-- and the usage events charged in a month: an event's row is rewritten when it is charged, so its
-- place in the table follows charged_at closely enough for a BRIN index
CREATE INDEX usage_events_charged_brin ON usage_events USING brin (charged_at) WITH (pages_per_range = 32);
-- The usage lines group items by their catalog key; without this the planner multiplies the distinct
-- counts of five correlated columns, expects a group per row and sorts instead of hashing in parallel.
CREATE STATISTICS usage_event_items_catalog_key (ndistinct)
    ON category, provider, model, unit, unit_price FROM usage_event_items;
"""

DOWNGRADE = """
DROP STATISTICS usage_event_items_catalog_key;
DROP INDEX usage_events_charged_brin;
DROP INDEX ledger_credits_time;
DROP INDEX ledger_created_brin;
DROP TABLE invoice_runs;
DROP TABLE invoice_lines;
DROP TABLE invoices;
DROP FUNCTION invoice_lines_only_with_their_invoice();
DROP FUNCTION invoices_immutable();
DROP FUNCTION round_half_even(numeric, integer);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
