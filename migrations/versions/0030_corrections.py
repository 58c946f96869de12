"""Corrections (issue 20): late usage (usage_events.occurred_at), corrections of one usage event,
re-rate runs with their per-event differences, and credit/debit notes.

Revision ID: 0030
Revises: 0018
Create Date: 2027-01-20
"""
from alembic import op

revision = "0030"
down_revision = "0018"
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
"""

DOWNGRADE = """
DROP TRIGGER usage_events_occurred_default ON usage_events;
DROP FUNCTION usage_events_occurred_default();
ALTER TABLE usage_events DROP COLUMN occurred_at;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
