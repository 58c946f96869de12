"""Auto top-up through Stripe (settings and attempts) and recurring allocations.

Revision ID: 0011
Revises: 0007
Create Date: 2026-12-01
"""
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UPGRADE = """
-- One rule per tenant. Either recharge_to (recharge up to that available balance) or amount (a fixed
-- top-up). disabled_reason is the circuit breaker's note: set when a payment fails, cleared when an
-- administrator enables the rule again.
CREATE TABLE auto_topup_settings (
    tenant_id text PRIMARY KEY,
    enabled boolean NOT NULL,
    threshold numeric NOT NULL CHECK (threshold >= 0),
    recharge_to numeric CHECK (recharge_to > threshold),
    amount numeric CHECK (amount > 0),
    stripe_customer_id text NOT NULL,
    stripe_payment_method_id text NOT NULL,
    max_per_month numeric CHECK (max_per_month > 0),
    cooldown_seconds integer NOT NULL CHECK (cooldown_seconds >= 0),
    disabled_reason text,
    disabled_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((recharge_to IS NULL) <> (amount IS NULL))
);

-- One row per attempt to pay. pending -> succeeded | failed; capped is final from the start. The
-- attempt id is Stripe's idempotency key; month is the UTC month the attempt counts in.
CREATE TABLE auto_topup_attempts (
    tenant_id text NOT NULL,
    id uuid NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'capped')),
    amount numeric NOT NULL CHECK (amount > 0),
    available_before numeric NOT NULL,
    threshold numeric NOT NULL,
    month date NOT NULL,
    payment_intent_id text,
    failure_code text,
    failure_message text,
    stripe_requests integer NOT NULL DEFAULT 0,
    next_try_at timestamptz NOT NULL DEFAULT now(),  -- a pending attempt not tried by then is enqueued again
    grant_id uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    CHECK ((status = 'pending') = (finished_at IS NULL)),
    CHECK ((status = 'succeeded') = (grant_id IS NOT NULL))
);
-- at most one attempt in flight per tenant, whoever evaluates (charging path, scan, retries)
CREATE UNIQUE INDEX auto_topup_attempts_one_pending ON auto_topup_attempts (tenant_id) WHERE status = 'pending';
-- a cap is recorded (and notified) once per tenant and month
CREATE UNIQUE INDEX auto_topup_attempts_capped_once ON auto_topup_attempts (tenant_id, month) WHERE status = 'capped';
CREATE INDEX auto_topup_attempts_time ON auto_topup_attempts (tenant_id, created_at DESC, id DESC);
CREATE INDEX auto_topup_attempts_due ON auto_topup_attempts (next_try_at) WHERE status = 'pending';

-- A recurring grant of a tenant.
CREATE TABLE allocations (
    tenant_id text NOT NULL,
    name text NOT NULL,
    amount numeric NOT NULL CHECK (amount > 0),
    kind text NOT NULL CHECK (kind IN ('promotional', 'paid')),
    period text NOT NULL CHECK (period = 'month'),
    expires_at_period_end boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- What an allocation granted, once per period: the key makes two beat runs (or a run and the
-- allocation's creation) grant it once. Kept when the allocation is deleted.
CREATE TABLE allocation_grants (
    tenant_id text NOT NULL,
    name text NOT NULL,
    period_start timestamptz NOT NULL,
    grant_id uuid NOT NULL,
    amount numeric NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name, period_start)
);

ALTER TABLE notifications DROP CONSTRAINT notifications_event_type_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_type_check CHECK (event_type IN
    ('balance.low', 'balance.depleted', 'invoice.finalized', 'budget.exceeded', 'reconciliation.mismatch',
     'auto_topup.failed', 'auto_topup.capped'));
"""

DOWNGRADE = """
DELETE FROM notification_attempts WHERE notification_id IN
    (SELECT id FROM notifications WHERE event_type IN ('auto_topup.failed', 'auto_topup.capped'));
DELETE FROM notifications WHERE event_type IN ('auto_topup.failed', 'auto_topup.capped');
ALTER TABLE notifications DROP CONSTRAINT notifications_event_type_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_type_check CHECK (event_type IN
    ('balance.low', 'balance.depleted', 'invoice.finalized', 'budget.exceeded', 'reconciliation.mismatch'));
DROP TABLE allocation_grants;
DROP TABLE allocations;
DROP TABLE auto_topup_attempts;
DROP TABLE auto_topup_settings;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
