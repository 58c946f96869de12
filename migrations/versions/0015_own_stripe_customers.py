"""Each tenant's own Stripe customer, and auto top-up rules checked against it (issue 25, finding 1).

- `stripe_customers`: the one Stripe customer LAD creates for a tenant (with metadata.tenantId). Cards are
  attached to it through SetupIntents LAD creates; an auto top-up rule may only name a card attached to it.
- `auto_topup_settings.verified_at`: when Stripe last confirmed the rule's customer and payment method are
  the tenant's own. A migration cannot ask Stripe, so every rule saved before this one starts unverified
  (NULL): the minute scan checks each unverified enabled rule with Stripe, marks it verified, or disables
  it with the reason and notifies `auto_topup.failed` (billing_core/auto_topup/attempts.verify_saved).
  Every attempt checks again before it pays, whatever this column says.

Revision ID: 0015
Revises: 0014
Create Date: 2027-01-04
"""
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE stripe_customers (
    tenant_id text NOT NULL PRIMARY KEY,
    stripe_customer_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE auto_topup_settings ADD COLUMN verified_at timestamptz;
"""

DOWNGRADE = """
ALTER TABLE auto_topup_settings DROP COLUMN verified_at;
DROP TABLE stripe_customers;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
