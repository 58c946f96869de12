"""Portal and console links open once (issue 25, findings 3 and 4).

A link's token (token_hash) is exchanged, at its first opening, for a session secret of its own
(session_hash, the browser's cookie); `opened_at` marks the link used, and a later opening is refused.
A session opened before this migration has no session secret, so its cookie opens nothing: its link,
not yet marked opened, opens once more.

Revision ID: 0016
Revises: 0015
Create Date: 2027-01-04
"""
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE portal_sessions ADD COLUMN session_hash text, ADD COLUMN opened_at timestamptz;
CREATE UNIQUE INDEX portal_sessions_session ON portal_sessions (tenant_id, session_hash);
ALTER TABLE console_sessions ADD COLUMN session_hash text UNIQUE, ADD COLUMN opened_at timestamptz;
"""

DOWNGRADE = """
ALTER TABLE console_sessions DROP COLUMN opened_at, DROP COLUMN session_hash;
DROP INDEX portal_sessions_session;
ALTER TABLE portal_sessions DROP COLUMN opened_at, DROP COLUMN session_hash;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
