"""Low-balance alert settings and states, notifications and their delivery attempts.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
-- A tenant's low-balance alerts: where they go and the ledger position evaluated so far. An
-- evaluation locks this row, so evaluations of one tenant run one after another.
CREATE TABLE alert_settings (
    tenant_id text PRIMARY KEY,
    webhook_url text,
    webhook_secret text NOT NULL,          -- signs webhook deliveries (LAD-Signature)
    email text,
    evaluated_seq bigint NOT NULL DEFAULT 0,  -- the wallet's ledger entries up to this seq were evaluated
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (tenant, threshold): armed until the available balance is at or below the threshold
-- (the alert fires and disarms), re-armed when the available balance is above it again.
CREATE TABLE alert_states (
    tenant_id text NOT NULL REFERENCES alert_settings (tenant_id) ON DELETE CASCADE,
    threshold numeric NOT NULL CHECK (threshold >= 0),
    armed boolean NOT NULL DEFAULT true,
    fired_count integer NOT NULL DEFAULT 0,
    last_fired_at timestamptz,
    last_rearmed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, threshold)
);

-- An event to deliver on one channel. tenant_id is NULL for operator events (reconciliation),
-- which go to OPERATOR_WEBHOOK_URL / OPERATOR_EMAIL. A delivery claims the row with a lease
-- (lease_until, lease_token), so two workers never deliver one notification at the same time.
CREATE TABLE notifications (
    id uuid PRIMARY KEY,
    tenant_id text,
    event_type text NOT NULL CHECK (event_type IN
        ('balance.low', 'balance.depleted', 'invoice.finalized', 'budget.exceeded', 'reconciliation.mismatch')),
    payload jsonb NOT NULL,
    channel text NOT NULL CHECK (channel IN ('webhook', 'email')),
    destination text NOT NULL,             -- the URL or e-mail address at the time of the event
    status text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    enqueued_at timestamptz NOT NULL,      -- when a delivery message was last sent for it
    lease_until timestamptz,
    lease_token uuid,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    failed_at timestamptz,
    CHECK ((status = 'delivered') = (delivered_at IS NOT NULL)),
    CHECK ((status = 'failed') = (failed_at IS NOT NULL)),
    CHECK ((lease_until IS NULL) = (lease_token IS NULL))
);
CREATE INDEX notifications_tenant_time ON notifications (tenant_id, created_at DESC, id DESC);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';

-- Every delivery attempt: HTTP status or SMTP reply, error, duration.
CREATE TABLE notification_attempts (
    tenant_id text,
    notification_id uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    attempt integer NOT NULL CHECK (attempt >= 1),
    started_at timestamptz NOT NULL,
    duration_ms integer,
    outcome text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'failed', 'abandoned')),
    http_status integer,
    smtp_result text,
    error text,
    PRIMARY KEY (notification_id, attempt)
);
"""

DOWNGRADE = """
DROP TABLE notification_attempts;
DROP TABLE notifications;
DROP TABLE alert_states;
DROP TABLE alert_settings;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
