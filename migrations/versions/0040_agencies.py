"""Agencies and sub-accounts (issue 21): an agency is a tenant the operator marks as a reseller; its
sub-accounts are tenants `<agencyId>:<name>` it creates; its resale price book multiplies its own
price for them; each charge of a sub-account records the agency's price beside the resale price.

Every table is keyed by the agency's tenant_id (a sub-account's agency is the prefix of its id), so
an agency's tree lives on one shard. A change to a price book or a tree moves the catalog revision:
a sub-account's prices are its agency's, scaled by the book.

Revision ID: 0040
Revises: 0030
Create Date: 2027-01-20
"""
from alembic import op

revision = "0040"
down_revision = "0030"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE agencies (
    tenant_id text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE sub_accounts (
    tenant_id text NOT NULL,  -- the agency
    sub_account_id text NOT NULL,
    funding text NOT NULL CHECK (funding IN ('prepaid', 'agency')),
    spend_cap numeric CHECK (spend_cap >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, sub_account_id),
    -- `<agencyId>:<name>`, no colon in the name: the agency is the part before the last colon, so the
    -- key (agency, sub-account) makes a sub-account id unique across agencies
    CHECK (left(sub_account_id, length(tenant_id) + 1) = tenant_id || ':'
           AND length(sub_account_id) > length(tenant_id) + 1
           AND position(':' in substr(sub_account_id, length(tenant_id) + 2)) = 0)
);
CREATE TABLE resale_multipliers (
    tenant_id text NOT NULL,  -- the agency
    id uuid NOT NULL,
    sub_account_id text,  -- NULL: every sub-account
    category text, provider text, model text, unit text,
    multiplier numeric NOT NULL CHECK (multiplier >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX resale_multipliers_scope ON resale_multipliers
    (tenant_id, coalesce(sub_account_id, ''), coalesce(category, ''), coalesce(provider, ''),
     coalesce(model, ''), coalesce(unit, ''));
-- one row per charged event of a sub-account: its resale amount and what LAD charged the agency
CREATE TABLE agency_charges (
    tenant_id text NOT NULL,  -- the agency
    usage_event_id uuid NOT NULL,
    sub_account_id text NOT NULL,
    feature_key text NOT NULL,
    resale_amount numeric NOT NULL,
    agency_amount numeric NOT NULL,
    ledger_entry_id uuid NOT NULL,  -- the agency's debit (its reference is the event's id)
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, usage_event_id)
);
-- a sub-account's item: what LAD charged its agency for it (cost is the resale price); operators only
ALTER TABLE usage_event_items ADD COLUMN agency_cost numeric;
-- an agency's debit names its sub-account's event (usage_event_id is keyed by the tenant's own events)
ALTER TABLE ledger_entries ADD COLUMN sub_account_event_id uuid;
CREATE UNIQUE INDEX ledger_one_agency_debit_per_event ON ledger_entries (tenant_id, sub_account_event_id)
    WHERE sub_account_event_id IS NOT NULL;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_check1;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_debit_names_event
    CHECK (entry_type <> 'debit' OR (amount <= 0 AND (usage_event_id IS NOT NULL OR sub_account_event_id IS NOT NULL)));
CREATE INDEX agency_charges_by_sub_account ON agency_charges (tenant_id, sub_account_id, created_at);
CREATE TRIGGER sub_accounts_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON sub_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION prices_bump_catalog_revision();
CREATE TRIGGER resale_multipliers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON resale_multipliers
    FOR EACH STATEMENT EXECUTE FUNCTION prices_bump_catalog_revision();
"""

DOWNGRADE = """
DROP TRIGGER resale_multipliers_changed ON resale_multipliers;
DROP TRIGGER sub_accounts_changed ON sub_accounts;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_debit_names_event;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_check1
    CHECK (entry_type <> 'debit' OR (amount <= 0 AND usage_event_id IS NOT NULL)) NOT VALID;
DROP INDEX ledger_one_agency_debit_per_event;
ALTER TABLE ledger_entries DROP COLUMN sub_account_event_id;
ALTER TABLE usage_event_items DROP COLUMN agency_cost;
DROP TABLE agency_charges;
DROP TABLE resale_multipliers;
DROP TABLE sub_accounts;
DROP TABLE agencies;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
