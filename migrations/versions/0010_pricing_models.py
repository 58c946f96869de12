"""Pricing models (package, graduated, minimum quantity), tenant multipliers, provider costs and the
monthly tier positions; each charged item records how it was priced and what it cost the platform.

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-01
"""
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
-- a price row is one model's terms; changing a price's model is a new effective-dated row
ALTER TABLE prices ALTER COLUMN unit_price DROP NOT NULL;
ALTER TABLE prices
    ADD COLUMN pricing_model text NOT NULL DEFAULT 'unit' CHECK (pricing_model IN ('unit', 'package', 'graduated')),
    ADD COLUMN package_size numeric CHECK (package_size > 0),
    ADD COLUMN package_price numeric CHECK (package_price >= 0),
    ADD COLUMN minimum_quantity numeric CHECK (minimum_quantity >= 0),
    -- [{"upTo": "1000" | null, "unitPrice": "0.01"}, ...], ascending, the last one open
    ADD COLUMN tiers jsonb,
    ADD CONSTRAINT prices_model_terms CHECK (
        (pricing_model = 'unit' AND unit_price IS NOT NULL AND package_size IS NULL AND package_price IS NULL
         AND tiers IS NULL)
        OR (pricing_model = 'package' AND unit_price IS NULL AND package_size IS NOT NULL
            AND package_price IS NOT NULL AND tiers IS NULL)
        OR (pricing_model = 'graduated' AND unit_price IS NULL AND package_size IS NULL AND package_price IS NULL
            AND jsonb_typeof(tiers) = 'array'));

-- a tenant's multiplier of the global prices (0.9: 10% off; 1.25: a markup), for every item or a
-- narrower scope (NULL: any); effective-dated like prices, never edited but to close it
CREATE TABLE price_adjustments (
    id uuid NOT NULL,
    tenant_id text NOT NULL,
    category text,
    provider text,
    model text,
    unit text,
    multiplier numeric NOT NULL CHECK (multiplier >= 0),
    effective_from timestamptz NOT NULL,
    effective_to timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CHECK (effective_to IS NULL OR effective_to > effective_from)
);
CREATE UNIQUE INDEX price_adjustments_scope_from ON price_adjustments
    (tenant_id, coalesce(category, ''), coalesce(provider, ''), coalesce(model, ''), coalesce(unit, ''),
     effective_from);
CREATE TRIGGER price_adjustments_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON price_adjustments
    FOR EACH STATEMENT EXECUTE FUNCTION prices_bump_catalog_revision();

-- what the platform pays its provider per unit: an operators' table (no tenant; a reference table
-- under Citus, like the global prices), effective-dated like prices
CREATE TABLE provider_costs (
    id uuid PRIMARY KEY,
    category text NOT NULL,
    provider text NOT NULL,
    model text NOT NULL,
    unit text NOT NULL,
    unit_cost numeric NOT NULL CHECK (unit_cost >= 0),
    currency text NOT NULL DEFAULT 'USD',
    effective_from timestamptz NOT NULL,
    effective_to timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (category, provider, model, unit, effective_from),
    CHECK (effective_to IS NULL OR effective_to > effective_from)
);
CREATE TRIGGER provider_costs_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON provider_costs
    FOR EACH STATEMENT EXECUTE FUNCTION prices_bump_catalog_revision();

-- the tenant's cumulative billed quantity of a catalog item in a UTC month: where its graduated
-- tiers stand. Read and advanced only under the wallet's row lock, in the debit's transaction.
CREATE TABLE tier_positions (
    tenant_id text NOT NULL,
    category text NOT NULL,
    provider text NOT NULL,
    model text NOT NULL,
    unit text NOT NULL,
    period_start timestamptz NOT NULL,
    billed_quantity numeric NOT NULL CHECK (billed_quantity >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, category, provider, model, unit, period_start)
);

-- how each item was priced when that was more than quantity x unit price (model, billed quantity,
-- tiers or packages, multiplier, and the parts invoices are made of), and its provider cost
ALTER TABLE usage_event_items
    ADD COLUMN pricing jsonb,
    ADD COLUMN unit_cost numeric CHECK (unit_cost >= 0),
    ADD COLUMN provider_cost numeric CHECK (provider_cost >= 0);
-- invoices read the priced parts of the few items that have them through this index
CREATE INDEX usage_event_items_priced ON usage_event_items (usage_event_id) WHERE pricing IS NOT NULL;
"""

DOWNGRADE = """
DROP INDEX usage_event_items_priced;
ALTER TABLE usage_event_items DROP COLUMN pricing, DROP COLUMN unit_cost, DROP COLUMN provider_cost;
DROP TABLE tier_positions;
DROP TABLE provider_costs;
DROP TABLE price_adjustments;
ALTER TABLE prices DROP CONSTRAINT prices_model_terms, DROP COLUMN tiers, DROP COLUMN minimum_quantity,
    DROP COLUMN package_price, DROP COLUMN package_size, DROP COLUMN pricing_model;
ALTER TABLE prices ALTER COLUMN unit_price SET NOT NULL;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
