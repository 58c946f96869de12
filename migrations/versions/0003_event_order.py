"""Arrival order of usage events, and a group's items by tenant and event.

Events accepted in one submission share a timestamp; `seq` records the order they arrived in, which
is the order a wallet's pending events are settled in.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE usage_events ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
DROP INDEX usage_events_tenant_pending;
CREATE INDEX usage_events_tenant_pending ON usage_events (tenant_id, seq) WHERE status = 'pending';
CREATE INDEX usage_event_items_tenant_event ON usage_event_items (tenant_id, usage_event_id);
"""

DOWNGRADE = """
DROP INDEX usage_event_items_tenant_event;
DROP INDEX usage_events_tenant_pending;
CREATE INDEX usage_events_tenant_pending ON usage_events (tenant_id, created_at, id) WHERE status = 'pending';
ALTER TABLE usage_events DROP COLUMN seq;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
