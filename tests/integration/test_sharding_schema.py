"""The schema can be sharded by tenant (Citus `create_distributed_table(table, 'tenant_id')`, all colocated),
read from PostgreSQL's own catalog after every migration, so tables added later are checked too:

- every table has a `tenant_id` column (a tenant table), or is named below as an operator table;
- a tenant table's `tenant_id` is NOT NULL (a distribution column has no NULLs);
- its primary key, every unique constraint and every unique index include `tenant_id`;
- every foreign key of a tenant table to another tenant table includes `tenant_id` on both sides
  (so the rows it joins live on one shard); a foreign key to an operator table is one to a Citus
  reference table, replicated to every node.
"""
from __future__ import annotations

from sqlalchemy import text

# Operator tables: not distributed by tenant (Citus reference tables replicated to every node, or
# kept on the coordinator). Some carry an optional tenant_id for what they concern, never as a key.
# Each is named here on purpose; a new table without tenant_id fails the test until it is placed.
OPERATOR_TABLES = {
    "alembic_version": "migration state",
    "catalog_revision": "the price catalog's revision (one row)",
    "prices": "the price catalog, global rows and tenants' overrides: a small reference table every charge reads",
    "provider_costs": "what the platform pays its providers per unit, global and effective-dated: a reference table",
    "console_sessions": "the operators' console sessions: no tenant",
    "stripe_events": "Stripe events as received; the tenant is known once the event is processed",
    "reconciliation_runs": "operator job runs over every tenant",
    "invoice_runs": "operator job runs over every tenant",
    "issuers": "who issues documents (the platform): a small reference table",
    "document_series": "one gapless number counter per issuer, locked by every issue: a reference table",
    "export_runs": "operator job runs over every tenant (or one, named but not a key)",
    "document_numbers": "every number an issuer issued, unique per issuer (to any tenant): kept on the coordinator",
    "catalog_corrections": "prices entered with a past start, with their reason: beside the prices (a reference table)",
    "rerate_runs": "operator job runs over every tenant (or one, named but not a key)",
}
# Tenant traffic that is not shardable yet, and why; this list may only shrink.
NOT_YET_SHARDABLE = {
    "notifications": "operator events (reconciliation.mismatch) are stored with tenant_id NULL; they need a "
                     "table of their own (or a reserved tenant) before tenant_id can be NOT NULL and in the key",
    "notification_attempts": "follows notifications",
}
EXEMPT = {**OPERATOR_TABLES, **NOT_YET_SHARDABLE}


def catalog(engine, query: str) -> list:
    with engine.connect() as connection:
        return list(connection.execute(text(query)))


def test_every_table_is_a_tenant_table_or_a_named_operator_table(engine):
    rows = catalog(engine, """
        SELECT c.relname, bool_or(a.attname = 'tenant_id') AS tenant, bool_or(a.attname = 'tenant_id' AND a.attnotnull)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
        GROUP BY c.relname""")
    untenanted = sorted(name for name, tenant, _ in rows if not tenant and name not in EXEMPT)
    assert untenanted == [], f"tables with neither tenant_id nor a place in OPERATOR_TABLES: {untenanted}"
    nullable = sorted(name for name, tenant, not_null in rows if tenant and not not_null and name not in EXEMPT)
    assert nullable == [], f"tenant tables whose tenant_id may be NULL: {nullable}"
    stale = sorted(set(EXEMPT) - {name for name, *_ in rows})
    assert stale == [], f"exceptions named for tables that do not exist: {stale}"


TENANT_TABLES = """
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
      AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                  AND NOT a.attisdropped)
      AND c.relname NOT IN ({})""".format(", ".join(f"'{name}'" for name in EXEMPT))


def test_keys_and_unique_constraints_of_tenant_tables_include_tenant_id(engine):
    missing_pk = catalog(engine, f"""
        SELECT t.oid::regclass::text FROM ({TENANT_TABLES}) t
        WHERE NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = t.oid AND k.contype = 'p')""")
    assert missing_pk == [], f"tenant tables without a primary key: {missing_pk}"
    # primary keys, unique constraints and unique indexes (which include those of the constraints)
    without_tenant = catalog(engine, f"""
        SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text
        FROM pg_index i JOIN ({TENANT_TABLES}) t ON t.oid = i.indrelid
        WHERE i.indisunique
          AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                          WHERE a.attrelid = i.indrelid AND a.attname = 'tenant_id' AND a.attnum = ANY (i.indkey))
        ORDER BY 1, 2""")
    assert without_tenant == [], f"unique keys of tenant tables without tenant_id: {without_tenant}"


def test_foreign_keys_between_tenant_tables_include_tenant_id_on_both_sides(engine):
    offending = catalog(engine, f"""
        SELECT k.conrelid::regclass::text, k.conname
        FROM pg_constraint k JOIN ({TENANT_TABLES}) t ON t.oid = k.conrelid
        WHERE k.contype = 'f'
          AND k.confrelid IN (SELECT oid FROM ({TENANT_TABLES}) r)
          AND NOT EXISTS (
              SELECT 1 FROM unnest(k.conkey, k.confkey) AS pair(col, refcol)
              JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = pair.col
              JOIN pg_attribute b ON b.attrelid = k.confrelid AND b.attnum = pair.refcol
              WHERE a.attname = 'tenant_id' AND b.attname = 'tenant_id')
        ORDER BY 1, 2""")
    assert offending == [], f"foreign keys between tenant tables that do not pair tenant_id: {offending}"
    to_operator = catalog(engine, f"""
        SELECT k.conrelid::regclass::text, k.confrelid::regclass::text
        FROM pg_constraint k JOIN ({TENANT_TABLES}) t ON t.oid = k.conrelid
        WHERE k.contype = 'f' AND k.confrelid NOT IN (SELECT oid FROM ({TENANT_TABLES}) r)""")
    assert {referenced for _, referenced in to_operator} <= set(EXEMPT), to_operator
