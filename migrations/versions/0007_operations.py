"""Operations: the request that accepted each usage event (for following a charge through the logs)
and the hourly reconciliation runs.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE usage_events ADD COLUMN request_id text;

-- one row per hour: a second run in the same hour (beat twice, or beat and an operator) finds it
-- and changes nothing. An operator table over every tenant: tenant_id is NULL for the whole ledger.
CREATE TABLE reconciliation_runs (
    id uuid PRIMARY KEY,
    tenant_id text,
    slot timestamptz NOT NULL,
    ok boolean NOT NULL,
    wallets_checked integer NOT NULL,
    mismatches jsonb NOT NULL,
    pending_events integer NOT NULL,
    stuck_pending_events integer NOT NULL,
    oldest_pending_seconds numeric NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX reconciliation_runs_slot ON reconciliation_runs (coalesce(tenant_id, ''), slot);
"""

DOWNGRADE = """
DROP TABLE reconciliation_runs;
ALTER TABLE usage_events DROP COLUMN request_id;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
