"""Keys by tenant: every primary key, unique constraint and foreign key among the tenant tables
includes tenant_id, as sharding them by tenant (Citus, colocated on tenant_id) requires.

The tables' ids are random UUIDs, so (tenant_id, id) is as unique as id was; what changes is that a
row is found by its tenant and its id, and that a foreign key pairs the tenant on both sides (a row
can only refer to a row of its own tenant — one more guarantee of tenant isolation). The keys are
rewritten from the catalog rather than spelled out, so their names and ON DELETE actions stay as
they were. Foreign keys to `prices` (the catalog: a reference table under Citus) stay single-column.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""
from alembic import op
from sqlalchemy import text

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TENANT_TABLES = ("wallets", "usage_events", "usage_event_items", "ledger_entries", "idempotency_records",
                 "credit_grants", "grant_draws", "quotes", "reservations", "budgets", "budget_spend",
                 "invoices", "invoice_lines")

_ACTIONS = {"a": "", "r": " ON DELETE RESTRICT", "c": " ON DELETE CASCADE", "n": " ON DELETE SET NULL",
            "d": " ON DELETE SET DEFAULT"}


# what the upgrade rewrites (as found at 0007); the downgrade takes tenant_id out of these only
KEYS = ("credit_grants_pkey", "invoice_lines_pkey", "invoices_pkey", "ledger_entries_pkey", "ledger_entries_seq_key",
        "quotes_pkey", "reservations_pkey", "usage_event_items_pkey", "usage_event_items_usage_event_id_position_key",
        "usage_events_pkey", "usage_events_task_id_key", "wallets_pkey")
FOREIGN_KEYS = (
    "credit_grants_wallet_id_fkey", "grant_draws_grant_id_fkey", "grant_draws_ledger_entry_id_fkey",
    "idempotency_records_ledger_entry_id_fkey", "idempotency_records_usage_event_id_fkey",
    "invoice_lines_invoice_id_fkey", "invoices_wallet_id_fkey", "ledger_entries_related_entry_id_fkey",
    "ledger_entries_usage_event_id_fkey", "ledger_entries_wallet_id_fkey", "reservations_quote_id_fkey",
    "reservations_usage_event_id_fkey", "reservations_wallet_id_fkey", "usage_event_items_usage_event_id_fkey",
    "usage_events_quote_id_fkey", "usage_events_reservation_id_fkey")


def _foreign_keys(connection, with_tenant: bool) -> list:
    """Foreign keys among TENANT_TABLES that do (or do not) pair tenant_id."""
    return list(r for r in connection.execute(text("""
        SELECT k.conname, k.conrelid::regclass::text AS tbl, k.confrelid::regclass::text AS ref, k.confdeltype,
               k.condeferrable, k.condeferred,
               array(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, o)
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n
                     WHERE a.attname <> 'tenant_id' ORDER BY u.o) AS cols,
               array(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(n, o)
                     JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n
                     WHERE a.attname <> 'tenant_id' ORDER BY u.o) AS refcols,
               EXISTS (SELECT 1 FROM unnest(k.conkey) u(n) JOIN pg_attribute a
                       ON a.attrelid = k.conrelid AND a.attnum = u.n WHERE a.attname = 'tenant_id') AS paired
        FROM pg_constraint k
        WHERE k.contype = 'f' AND k.conrelid::regclass::text = ANY(:tables)
          AND k.confrelid::regclass::text = ANY(:tables)
    """), {"tables": list(TENANT_TABLES)}) if r.paired == with_tenant)


def _unique_keys(connection, with_tenant: bool) -> list:
    """Primary keys and unique constraints of TENANT_TABLES that do (or do not) include tenant_id."""
    return list(r for r in connection.execute(text("""
        SELECT k.conname, k.conrelid::regclass::text AS tbl, k.contype,
               array(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, o)
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n
                     WHERE a.attname <> 'tenant_id' ORDER BY u.o) AS cols,
               EXISTS (SELECT 1 FROM unnest(k.conkey) u(n) JOIN pg_attribute a
                       ON a.attrelid = k.conrelid AND a.attnum = u.n WHERE a.attname = 'tenant_id') AS paired
        FROM pg_constraint k
        WHERE k.contype IN ('p', 'u') AND k.conrelid::regclass::text = ANY(:tables)
    """), {"tables": list(TENANT_TABLES)}) if r.paired == with_tenant)


def _rewrite(with_tenant: bool) -> None:
    connection = op.get_bind()
    foreign = _foreign_keys(connection, not with_tenant)
    keys = _unique_keys(connection, not with_tenant)
    if not with_tenant:
        foreign = [fk for fk in foreign if fk.conname in FOREIGN_KEYS]
        keys = [key for key in keys if key.conname in KEYS]
    for fk in foreign:
        op.execute(f'ALTER TABLE {fk.tbl} DROP CONSTRAINT "{fk.conname}"')
    for key in keys:
        kind = "PRIMARY KEY" if key.contype == "p" else "UNIQUE"
        columns = (["tenant_id"] if with_tenant else []) + list(key.cols)
        op.execute(f'ALTER TABLE {key.tbl} DROP CONSTRAINT "{key.conname}", '
                   f'ADD CONSTRAINT "{key.conname}" {kind} ({", ".join(columns)})')
    for fk in foreign:
        lead = ["tenant_id"] if with_tenant else []
        deferrable = (" DEFERRABLE" + (" INITIALLY DEFERRED" if fk.condeferred else "")) if fk.condeferrable else ""
        op.execute(f'ALTER TABLE {fk.tbl} ADD CONSTRAINT "{fk.conname}" FOREIGN KEY ({", ".join(lead + list(fk.cols))}) '
                   f'REFERENCES {fk.ref} ({", ".join(lead + list(fk.refcols))}){_ACTIONS[fk.confdeltype]}{deferrable}')


def upgrade() -> None:
    _rewrite(with_tenant=True)


def downgrade() -> None:
    _rewrite(with_tenant=False)
