"""Pages people look at: portal sessions (one tenant), console sessions (operators), and the record of
every change made through those pages.

Revision ID: 0012
Revises: 0007
Create Date: 2026-12-01
"""
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UPGRADE = """
-- A portal link's token is stored only as its SHA-256; the tenant is part of the link, so a session is
-- found by (tenant_id, token_hash) on the tenant's shard.
CREATE TABLE portal_sessions (
    tenant_id text NOT NULL,
    id uuid NOT NULL,
    token_hash text NOT NULL,
    created_by text,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, token_hash)
);

-- An operator table (no tenant): the console acts on every tenant.
CREATE TABLE console_sessions (
    id uuid PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    created_by text,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every change made through the portal or the console, in the transaction that made it: who (the
-- session), what, and the request as submitted (with the reason, for operators' actions).
CREATE TABLE page_actions (
    tenant_id text NOT NULL,
    id uuid NOT NULL,
    surface text NOT NULL CHECK (surface IN ('portal', 'console')),
    session_id uuid NOT NULL,
    action text NOT NULL,
    request jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX page_actions_recent ON page_actions (tenant_id, created_at DESC);
"""

DOWNGRADE = """
DROP TABLE page_actions;
DROP TABLE console_sessions;
DROP TABLE portal_sessions;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
