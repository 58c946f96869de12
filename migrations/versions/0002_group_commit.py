"""Group commit: the pending-per-tenant index and a catalog revision that caches can watch.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
-- claiming a wallet's pending events in order, FOR UPDATE SKIP LOCKED
CREATE INDEX usage_events_tenant_pending ON usage_events (tenant_id, created_at, id) WHERE status = 'pending';

-- one row whose revision moves in the same transaction as any change to prices, so a process
-- that caches the catalog reloads it exactly when it changed (a reference table, like global prices)
CREATE TABLE catalog_revision (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    revision bigint NOT NULL
);
INSERT INTO catalog_revision (revision) VALUES (1);

CREATE FUNCTION prices_bump_catalog_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE catalog_revision SET revision = revision + 1;
    RETURN NULL;
END;
$$;
CREATE TRIGGER prices_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON prices
    FOR EACH STATEMENT EXECUTE FUNCTION prices_bump_catalog_revision();
"""

DOWNGRADE = """
DROP TRIGGER prices_changed ON prices;
DROP FUNCTION prices_bump_catalog_revision();
DROP TABLE catalog_revision;
DROP INDEX usage_events_tenant_pending;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
