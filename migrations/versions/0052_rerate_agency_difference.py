"""Agencies (issue 21): a re-rate of a sub-account's event records what the agency's price moved by with
it (`rerate_events.agency_difference`; NULL for any other tenant's event), so the operator's margins take
LAD's revenue from the event (the agency's price) down by that, not by the resale difference.

Revision ID: 0052
Revises: 0051
Create Date: 2027-02-10
"""
from alembic import op

revision = "0052"
down_revision = "0051"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE rerate_events ADD COLUMN agency_difference numeric")


def downgrade() -> None:
    op.execute("ALTER TABLE rerate_events DROP COLUMN agency_difference")
