"""Agencies, the money side (issue 21): an agency-funded sub-account's hold (marked with its agency: it
sets nothing aside on the sub-account's own wallet) is backed by a hold on its agency's wallet (same id,
at the agency's price), marked with the sub-account it backs so it is not counted as one of the
agency's own calls; refunds and corrections of a sub-account's event are
recorded beside the charge's pair (resale, agency price) for the agency's margins.

Revision ID: 0041
Revises: 0040
Create Date: 2027-01-27
"""
from alembic import op

revision = "0041"
down_revision = "0040"
branch_labels = None
depends_on = None

UPGRADE = """
-- on an agency's hold: the sub-account whose call it backs (agency funding; the sub-account's hold has
-- the same id); NULL on every other hold
ALTER TABLE reservations ADD COLUMN sub_account_id text;
-- on an agency-funded sub-account's hold: its agency, whose wallet sets the hold aside (the
-- sub-account's own wallet sets nothing aside: it has no balance)
ALTER TABLE reservations ADD COLUMN agency_id text;
-- a backing hold is settled by its agency's debit, which names the sub-account's event
-- (ledger_entries.sub_account_event_id): its own usage_event_id would name an event of another tenant
ALTER TABLE reservations DROP CONSTRAINT reservations_check;
ALTER TABLE reservations ADD CONSTRAINT reservations_settled_names_event
    CHECK ((status = 'settled') = (settled_amount IS NOT NULL
                                   AND (usage_event_id IS NOT NULL OR sub_account_id IS NOT NULL)));
-- an agency's correction of its debit for a sub-account's event names that debit (related_entry_id) but
-- no event of its own (the event is the sub-account's): a correction naming an event still names its debit
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_correction_links;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_correction_links
    CHECK (entry_type <> 'correction' OR usage_event_id IS NULL OR related_entry_id IS NOT NULL);
-- on a sub-account's refund or correction entry: what its agency's price for the event moved by with it
-- (positive: given back to the agency), so the operator's margins take LAD's own refund off LAD's revenue
ALTER TABLE ledger_entries ADD COLUMN agency_amount numeric;
-- what refunds gave back, and what corrections gave back (positive) or took more (negative), at each level
ALTER TABLE agency_charges ADD COLUMN resale_refunded numeric NOT NULL DEFAULT 0;
ALTER TABLE agency_charges ADD COLUMN agency_refunded numeric NOT NULL DEFAULT 0;
ALTER TABLE agency_charges ADD COLUMN resale_corrected numeric NOT NULL DEFAULT 0;
ALTER TABLE agency_charges ADD COLUMN agency_corrected numeric NOT NULL DEFAULT 0;
"""

DOWNGRADE = """
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_correction_links;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_correction_links
    CHECK (entry_type <> 'correction' OR (usage_event_id IS NULL) = (related_entry_id IS NULL)) NOT VALID;
ALTER TABLE reservations DROP CONSTRAINT reservations_settled_names_event;
ALTER TABLE reservations ADD CONSTRAINT reservations_check
    CHECK ((status = 'settled') = (usage_event_id IS NOT NULL AND settled_amount IS NOT NULL)) NOT VALID;
ALTER TABLE agency_charges DROP COLUMN agency_corrected;
ALTER TABLE agency_charges DROP COLUMN resale_corrected;
ALTER TABLE agency_charges DROP COLUMN agency_refunded;
ALTER TABLE agency_charges DROP COLUMN resale_refunded;
ALTER TABLE ledger_entries DROP COLUMN agency_amount;
ALTER TABLE reservations DROP COLUMN agency_id;
ALTER TABLE reservations DROP COLUMN sub_account_id;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
