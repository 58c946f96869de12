"""The schema can be sharded by tenant (Citus `create_distributed_table(table, 'tenant_id')`, all colocated),
read from PostgreSQL's own catalog after every migration, so tables added later are checked too:

- every table has a `tenant_id` column (a tenant table), or is named below as an operator table;
- a tenant table's `tenant_id` is NOT NULL (a distribution column has no NULLs);
- its primary key, every unique constraint and every unique index include `tenant_id`;
- every foreign key of a tenant table to another tenant table includes `tenant_id` on both sides
  (so the rows it joins live on one shard); a foreign key to an operator table is one to a Citus
  reference table, replicated to every node.
- the one foreign-key cycle Citus cannot distribute is gone, and the distribution procedure refuses plain PostgreSQL.
"""
from __future__ import annotations

from sqlalchemy import text

from billing_core.sharding import COORDINATOR, REFERENCE, TABLE_KINDS, TENANT, NeedsCitus, distribute, tables_of

# Every table's kind is declared once, in billing_core.sharding.TABLE_KINDS (tenant / reference / coordinator),
# which the distribution procedure reads too; a new table fails here until it is placed there.
EXEMPT = {name: why for name, (kind, why) in TABLE_KINDS.items() if kind != TENANT}



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
    unplaced = sorted(name for name, *_ in rows if name not in TABLE_KINDS)
    assert unplaced == [], f"tables without a kind in billing_core.sharding.TABLE_KINDS: {unplaced}"
    untenanted = sorted(name for name, tenant, _ in rows if not tenant and name not in EXEMPT)
    assert untenanted == [], f"tenant tables without tenant_id: {untenanted}"
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
    # a distributed table may reference only a reference table among the others
    assert {referenced for _, referenced in to_operator} <= set(tables_of(REFERENCE)), to_operator


def test_no_foreign_key_cycle_among_tenant_tables(engine):
    """Citus distributes a table only after every table it references: a cycle (reservations ↔ usage_events
    was one) cannot be distributed in any order."""
    edges = catalog(engine, f"""
        SELECT k.conrelid::regclass::text, k.confrelid::regclass::text
        FROM pg_constraint k JOIN ({TENANT_TABLES}) t ON t.oid = k.conrelid
        WHERE k.contype = 'f' AND k.conrelid <> k.confrelid""")
    graph: dict[str, set[str]] = {}
    for table, referenced in edges:
        graph.setdefault(table, set()).add(referenced)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))
    assert sorted(t for t in graph if reaches(t, t, set())) == []


def test_the_distribution_procedure_needs_citus_and_changes_nothing_without_it(engine):
    """`make citus-distribute` against plain PostgreSQL: it says it needs Citus, changes nothing."""
    import subprocess
    import sys

    from devstack.stack import ROOT

    def state() -> list:
        return catalog(engine, """
            SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'f'
            UNION ALL SELECT 'extension', extname FROM pg_extension ORDER BY 1, 2""")
    before = state()
    try:
        distribute(engine, say=lambda _: None)
        raise AssertionError("distribute() ran on plain PostgreSQL")
    except NeedsCitus as exc:
        assert "Citus" in str(exc)
    run = subprocess.run([sys.executable, "-m", "billing_core.sharding"], cwd=ROOT, capture_output=True, text=True,
                         env={"DATABASE_URL": str(engine.url.render_as_string(hide_password=False)),
                              "PATH": "/usr/bin:/bin"}, timeout=120)
    assert run.returncode != 0 and "needs Citus" in run.stderr, run.stderr
    assert state() == before
    assert set(tables_of(COORDINATOR)) >= {"notifications", "stripe_events"}


def test_no_trigger_on_a_distributed_table_touches_another_table(engine):
    """A trigger fires on the shard under Citus: one that writes another table (the catalog revision's did)
    fails there. The append-only triggers only RAISE on their own table (tests/support/citus_rules.py)."""
    from tests.support.citus_rules import TRIGGERS_SQL, trigger_violations

    triggers = catalog(engine, TRIGGERS_SQL)
    assert {t[0] for t in triggers} >= {"ledger_entries", "invoices"}  # the append-only ones are read
    assert [str(v) for v in trigger_violations(triggers)] == []
