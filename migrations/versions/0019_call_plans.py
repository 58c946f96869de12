"""Calls (issue 19): a tenant's call plan (concurrency limits, burst, grace for settling past the
balance, settlement policy) and burst holds; indexes for a call's statement (its holds, events and entries by reference).

A wallet a call's settlement took below what it could spend records since when (`in_debt_since`): the
database's spendable check admits it, as it admits a flagged wallet. A hold admitted above the plan's
base limit records the multiplier its settlement is priced at.

Revision ID: 0019
Revises: 0018
Create Date: 2027-01-10
"""
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE call_plans (
    tenant_id text PRIMARY KEY,
    max_concurrent_calls integer CHECK (max_concurrent_calls >= 0),
    burst_limit integer CHECK (burst_limit >= 0),
    burst_multiplier numeric NOT NULL DEFAULT 1 CHECK (burst_multiplier >= 1),
    call_grace_limit numeric CHECK (call_grace_limit >= 0),
    settlement_policy text NOT NULL DEFAULT 'grace' CHECK (settlement_policy IN ('grace', 'strict')),
    feature_limits jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE reservations ADD COLUMN burst_multiplier numeric;
-- a call settled in full past what the wallet could spend: below zero by the plan's grace, not by a bug
ALTER TABLE wallets ADD COLUMN in_debt_since timestamptz;
ALTER TABLE wallets DROP CONSTRAINT wallets_spendable;
ALTER TABLE wallets ADD CONSTRAINT wallets_spendable
    CHECK (current_balance - reserved_balance + overdraft_limit >= 0 OR flagged_at IS NOT NULL
           OR in_debt_since IS NOT NULL);
CREATE INDEX reservations_by_reference ON reservations (tenant_id, external_reference_id)
    WHERE external_reference_id IS NOT NULL;
ALTER TABLE notifications DROP CONSTRAINT notifications_event_type_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_type_check CHECK (event_type IN
    ('balance.low', 'balance.depleted', 'invoice.finalized', 'budget.exceeded', 'reconciliation.mismatch',
     'auto_topup.failed', 'auto_topup.capped', 'wallet.in_debt', 'wallet.debt_repaid'));
CREATE INDEX usage_events_by_reference ON usage_events (tenant_id, external_reference_id)
    WHERE external_reference_id IS NOT NULL;
CREATE INDEX ledger_by_reservation ON ledger_entries (tenant_id, reservation_id) WHERE reservation_id IS NOT NULL;
"""

DOWNGRADE = """
DELETE FROM notification_attempts WHERE notification_id IN
    (SELECT id FROM notifications WHERE event_type IN ('wallet.in_debt', 'wallet.debt_repaid'));
DELETE FROM notifications WHERE event_type IN ('wallet.in_debt', 'wallet.debt_repaid');
ALTER TABLE notifications DROP CONSTRAINT notifications_event_type_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_type_check CHECK (event_type IN
    ('balance.low', 'balance.depleted', 'invoice.finalized', 'budget.exceeded', 'reconciliation.mismatch',
     'auto_topup.failed', 'auto_topup.capped'));
DROP INDEX ledger_by_reservation;
DROP INDEX usage_events_by_reference;
DROP INDEX reservations_by_reference;
ALTER TABLE wallets DROP CONSTRAINT wallets_spendable;
ALTER TABLE wallets ADD CONSTRAINT wallets_spendable
    CHECK (current_balance - reserved_balance + overdraft_limit >= 0 OR flagged_at IS NOT NULL);
ALTER TABLE wallets DROP COLUMN in_debt_since;
ALTER TABLE reservations DROP COLUMN burst_multiplier;
DROP TABLE call_plans;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
