"""Agencies (issue 21): a sub-account's agency comes from the agencies' own records, not from its id.
`agency_members` is keyed by the sub-account's own tenant_id (so it lives on the sub-account's shard and
is read by one primary-key lookup), naming its agency; its key makes a tenant a sub-account of at most
one agency. With it, any tenant can be attached to an agency: the check that a sub-account's id is
`<agencyId>:<name>` goes.

Revision ID: 0051
Revises: 0050
Create Date: 2027-02-03
"""
from alembic import op

revision = "0051"
down_revision = "0050"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE agency_members (
    tenant_id text PRIMARY KEY,  -- the sub-account
    agency_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO agency_members (tenant_id, agency_id, created_at)
SELECT sub_account_id, tenant_id, created_at FROM sub_accounts;
ALTER TABLE sub_accounts DROP CONSTRAINT sub_accounts_check;
"""

DOWNGRADE = """
ALTER TABLE sub_accounts ADD CONSTRAINT sub_accounts_check
    CHECK (left(sub_account_id, length(tenant_id) + 1) = tenant_id || ':'
           AND length(sub_account_id) > length(tenant_id) + 1
           AND position(':' in substr(sub_account_id, length(tenant_id) + 2)) = 0) NOT VALID;
DROP TABLE agency_members;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
