"""Citus-ready (issue 26): no trigger writes another table, and no foreign-key cycle between tenant tables.

- The catalog-revision triggers on prices, price_adjustments, provider_costs, sub_accounts and
  resale_multipliers go: under Citus they fire on a shard, from where they cannot update the reference
  table catalog_revision ("cannot execute a distributed query from a query on a shard"). The use cases
  that write those tables bump the revision in their own transaction (billing_core/catalog/revision.py).
- reservations.usage_event_id → usage_events goes (usage_events.reservation_id → reservations stays):
  the two keys made a cycle that Citus cannot distribute in either order. A settled hold's event is still
  guarded: the settlement's ledger entry names the same event through ledger_entries' key to
  usage_events, written in the same transaction, and the ledger verification reports a settled hold whose
  event is missing (billing_core/ledger/verification.py).

- agency_charges keeps the sub-account's event's occurred_at and charged_at, so the agency's invoice reads
  its usage from its own rows (the event is the sub-account's, another tenant: another shard).

The append-only triggers stay (they RAISE on their own table and write nothing; docs/scaling.md).

Revision ID: 0050
Revises: 0040
Create Date: 2027-02-01
"""
from alembic import op

revision = "0050"
down_revision = "0041"
branch_labels = None
depends_on = None

CATALOG_TRIGGERS = {
    "prices": "prices_changed",
    "price_adjustments": "price_adjustments_changed",
    "provider_costs": "provider_costs_changed",
    "sub_accounts": "sub_accounts_changed",
    "resale_multipliers": "resale_multipliers_changed",
}


def upgrade() -> None:
    for table, trigger in CATALOG_TRIGGERS.items():
        op.execute(f"DROP TRIGGER {trigger} ON {table}")
    op.execute("DROP FUNCTION prices_bump_catalog_revision()")
    op.execute("ALTER TABLE reservations DROP CONSTRAINT reservations_usage_event_id_fkey")
    op.execute("""
ALTER TABLE agency_charges ADD COLUMN occurred_at timestamptz, ADD COLUMN charged_at timestamptz;
UPDATE agency_charges a SET occurred_at = e.occurred_at, charged_at = e.charged_at
FROM usage_events e WHERE e.tenant_id = a.sub_account_id AND e.id = a.usage_event_id;
UPDATE agency_charges SET occurred_at = coalesce(occurred_at, created_at), charged_at = coalesce(charged_at, created_at)
WHERE occurred_at IS NULL OR charged_at IS NULL;
ALTER TABLE agency_charges ALTER COLUMN occurred_at SET NOT NULL, ALTER COLUMN charged_at SET NOT NULL;
""")


def downgrade() -> None:
    op.execute("ALTER TABLE agency_charges DROP COLUMN occurred_at, DROP COLUMN charged_at")
    op.execute("ALTER TABLE reservations ADD CONSTRAINT reservations_usage_event_id_fkey "
               "FOREIGN KEY (tenant_id, usage_event_id) REFERENCES usage_events (tenant_id, id)")
    op.execute("""
CREATE FUNCTION prices_bump_catalog_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE catalog_revision SET revision = revision + 1;
    RETURN NULL;
END;
$$""")
    for table, trigger in CATALOG_TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION prices_bump_catalog_revision()")
