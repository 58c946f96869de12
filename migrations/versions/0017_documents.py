"""Documents a finance team accepts (issue 24): issuers with one gapless number series each, the
customer's billing details, a tenant's tax treatment, receipts for paid credit purchases, and numbered
monthly statements.

A number is taken from `document_series` (its row locked FOR UPDATE) in the transaction that issues the
document and is recorded in `document_numbers` (unique per issuer): a number exists only if its document
does. No sequence: a sequence hands out numbers that a rolled-back transaction never uses.

Revision ID: 0017
Revises: 0016
Create Date: 2027-01-10
"""
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE issuers (
    id text PRIMARY KEY,
    legal_name text NOT NULL,
    address text NOT NULL,
    tax_id text,
    email text,
    number_prefix text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE document_series (
    issuer_id text PRIMARY KEY REFERENCES issuers (id),
    next_number bigint NOT NULL CHECK (next_number >= 1)
);
CREATE TABLE document_numbers (
    issuer_id text NOT NULL REFERENCES issuers (id),
    number_value bigint NOT NULL,
    number text NOT NULL,
    tenant_id text NOT NULL,
    document_type text NOT NULL CHECK (document_type IN ('invoice', 'receipt', 'credit_note')),
    document_id uuid NOT NULL,
    issued_at timestamptz NOT NULL,
    PRIMARY KEY (issuer_id, number_value)
);
INSERT INTO issuers (id, legal_name, address, number_prefix) VALUES ('platform', 'LAD', '', 'LAD-');
INSERT INTO document_series (issuer_id, next_number) VALUES ('platform', 1);

CREATE TABLE billing_details (
    tenant_id text PRIMARY KEY,
    legal_name text NOT NULL,
    address text NOT NULL,
    tax_id text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE tax_treatments (
    tenant_id text PRIMARY KEY,
    mode text NOT NULL CHECK (mode IN ('rate', 'reverse_charge', 'exempt')),
    rate numeric CHECK (rate >= 0 AND rate < 1),
    label text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((mode = 'rate') = (rate IS NOT NULL))
);

CREATE TABLE receipts (
    tenant_id text NOT NULL,
    id uuid NOT NULL,
    grant_id uuid NOT NULL,
    issuer_id text NOT NULL REFERENCES issuers (id),
    number text NOT NULL,
    currency text NOT NULL,
    minor_unit integer NOT NULL,
    gross numeric NOT NULL,
    net numeric NOT NULL,
    tax numeric NOT NULL,
    tax_mode text NOT NULL,
    tax_rate numeric,
    tax_label text,
    tax_wording text,
    rounding_difference numeric NOT NULL,
    source text NOT NULL,
    description text,
    issuer jsonb NOT NULL,
    customer jsonb,
    issued_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, grant_id),
    CHECK (net + tax = gross)
);
CREATE INDEX receipts_issued ON receipts (tenant_id, issued_at DESC, id DESC);
CREATE TRIGGER receipts_no_update_delete BEFORE UPDATE OR DELETE ON receipts
    FOR EACH ROW EXECUTE FUNCTION invoices_immutable();

ALTER TABLE invoices ADD COLUMN number text, ADD COLUMN issued_at timestamptz, ADD COLUMN issuer_id text,
    ADD COLUMN issuer jsonb, ADD COLUMN customer jsonb;

"""

DOWNGRADE = """
ALTER TABLE invoices DROP COLUMN customer, DROP COLUMN issuer, DROP COLUMN issuer_id, DROP COLUMN issued_at,
    DROP COLUMN number;
DROP TABLE receipts;
DROP TABLE tax_treatments;
DROP TABLE billing_details;
DROP TABLE document_numbers;
DROP TABLE document_series;
DROP TABLE issuers;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
