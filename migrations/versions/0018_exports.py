"""Parquet exports (issue 24): one row per export run (a UTC day, some tables, every tenant or one).

Revision ID: 0018
Revises: 0017
Create Date: 2027-01-10
"""
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE export_runs (
    id uuid PRIMARY KEY,
    day date NOT NULL,
    tables text[] NOT NULL,
    tenant_id text,                    -- NULL: every tenant
    status text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    files jsonb NOT NULL DEFAULT '[]',
    error text,
    requested_by text,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX export_runs_day ON export_runs (day, started_at DESC);
"""

DOWNGRADE = "DROP TABLE export_runs;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
