"""Fewer indexes to maintain on the rows every charge writes (bench/PROFILE.md, issue 14).

- usage_event_items had UNIQUE (tenant_id, usage_event_id, position) (since 0008) and an index
  (tenant_id, usage_event_id): two btrees per item for what one serves. The unique key answers every
  lookup (all filter on the tenant and the event, and order by position), so the index goes.
- ledger_entries had (tenant_id, wallet_id, seq) beside (tenant_id, seq DESC). A tenant has exactly one
  wallet (wallets_tenant_id_key), so both order the same entries the same way; the second serves every
  query the first did (a btree reads backwards as well as forwards). One btree fewer per ledger entry.

Every uniqueness the exactly-once design relies on stays: the idempotency records' key, the events'
(tenant_id, idempotency_key), one debit per event, one settlement per hold.

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-01
"""
from alembic import op

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = """
DROP INDEX usage_event_items_tenant_event;
DROP INDEX ledger_wallet_seq;
"""

DOWNGRADE = """
CREATE INDEX ledger_wallet_seq ON ledger_entries (tenant_id, wallet_id, seq);
CREATE INDEX usage_event_items_tenant_event ON usage_event_items (tenant_id, usage_event_id);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
