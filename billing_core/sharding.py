"""Where every table lives under Citus (docs/scaling.md), and the distribution procedure.

`TABLE_KINDS` is the one place a table declares its kind; the procedure below
(`python -m billing_core.sharding`, `make citus-distribute`), tests/integration/test_sharding_schema.py and the
statement check of the test suite (tests/support/citus_rules.py) all read it:

- `tenant`: distributed by `tenant_id`, colocated with `wallets`, so one tenant's rows are on one shard and a
  money transaction runs on one node;
- `reference`: small tables every node needs (the catalog, the issuers), replicated to every node;
- `coordinator`: operator tables kept on the coordinator as plain tables (job runs, received Stripe events,
  the operators' console sessions), or tenant traffic not shardable yet (`notifications`).

A new table fails test_sharding_schema.py until it is placed here.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

Kind = Literal["tenant", "reference", "coordinator"]

TENANT: Kind = "tenant"
REFERENCE: Kind = "reference"
COORDINATOR: Kind = "coordinator"

# the table every tenant table is colocated with; distributed first
ANCHOR = "wallets"

TABLE_KINDS: dict[str, tuple[Kind, str]] = {
    # --- tenant tables, by domain -------------------------------------------------------------------
    "wallets": (TENANT, "a tenant's balance; the anchor of the colocation group"),
    "ledger_entries": (TENANT, "the append-only ledger"),
    "credit_grants": (TENANT, "credit with an expiry"),
    "grant_draws": (TENANT, "which grant each entry drew on"),
    "allocations": (TENANT, "named allocations of a wallet"),
    "allocation_grants": (TENANT, "grants of an allocation"),
    "usage_events": (TENANT, "charges as accepted"),
    "usage_event_items": (TENANT, "the priced items of an event"),
    "idempotency_records": (TENANT, "answers kept per idempotency key"),
    "reservations": (TENANT, "holds"),
    "quotes": (TENANT, "price quotes"),
    "budgets": (TENANT, "spend limits per feature"),
    "budget_spend": (TENANT, "spend per budget period"),
    "tier_positions": (TENANT, "where a tenant's graduated tiers stand this month"),
    "price_adjustments": (TENANT, "a tenant's multipliers on the catalog"),
    "alert_settings": (TENANT, "balance-alert settings"),
    "alert_states": (TENANT, "balance-alert state"),
    "auto_topup_settings": (TENANT, "auto top-up rules"),
    "auto_topup_attempts": (TENANT, "auto top-up payments"),
    "stripe_customers": (TENANT, "a tenant's Stripe customer"),
    "invoices": (TENANT, "monthly invoices"),
    "invoice_lines": (TENANT, "their lines"),
    "portal_sessions": (TENANT, "the tenant portal's sessions"),
    "page_actions": (TENANT, "single-use links of the portal"),
    "billing_details": (TENANT, "who a tenant's documents are addressed to"),
    "tax_treatments": (TENANT, "a tenant's tax treatment"),
    "receipts": (TENANT, "issued receipts"),
    "credit_notes": (TENANT, "issued credit notes"),
    "call_plans": (TENANT, "a tenant's call plan"),
    "usage_corrections": (TENANT, "corrections of usage events"),
    "rerate_tenants": (TENANT, "a re-rate run's progress per tenant"),
    "rerate_events": (TENANT, "events a re-rate run changed"),
    "agencies": (TENANT, "resellers (the agency's tenant_id)"),
    "sub_accounts": (TENANT, "an agency's sub-accounts (keyed by the agency)"),
    "agency_members": (TENANT, "a sub-account's membership of its agency (keyed by the sub-account)"),
    "resale_multipliers": (TENANT, "an agency's resale price book"),
    "agency_charges": (TENANT, "each sub-account charge, keyed by the agency"),
    # --- reference tables: replicated to every node ---------------------------------------------------
    "catalog_revision": (REFERENCE, "the price catalog's revision (one row)"),
    "prices": (REFERENCE, "the price catalog, global rows and tenants' overrides: every charge reads it"),
    "provider_costs": (REFERENCE, "what the platform pays its providers per unit, global and effective-dated"),
    "catalog_corrections": (REFERENCE, "prices entered with a past start, beside the prices"),
    "issuers": (REFERENCE, "who issues documents (the platform); tenant documents reference it"),
    "document_series": (REFERENCE, "one gapless number counter per issuer, locked by every issue"),
    # --- coordinator: plain tables on the coordinator --------------------------------------------------
    "alembic_version": (COORDINATOR, "migration state"),
    "console_sessions": (COORDINATOR, "the operators' console sessions: no tenant"),
    "stripe_events": (COORDINATOR, "Stripe events as received; the tenant is known once the event is processed"),
    "reconciliation_runs": (COORDINATOR, "operator job runs over every tenant"),
    "invoice_runs": (COORDINATOR, "operator job runs over every tenant"),
    "export_runs": (COORDINATOR, "operator job runs over every tenant (or one, named but not a key)"),
    "rerate_runs": (COORDINATOR, "operator job runs over every tenant (or one, named but not a key)"),
    "document_numbers": (COORDINATOR, "every number an issuer issued, unique per issuer (to any tenant); its "
                                      "key to issuers makes it a Citus local table"),
    # not yet shardable: this list may only shrink
    "notifications": (COORDINATOR, "operator events (reconciliation.mismatch) are stored with tenant_id NULL; "
                                   "they need a table of their own before tenant_id can be NOT NULL and a key"),
    "notification_attempts": (COORDINATOR, "follows notifications"),
}


def tables_of(kind: Kind) -> list[str]:
    return [name for name, (k, _) in TABLE_KINDS.items() if k == kind]


def tenant_tables() -> frozenset[str]:
    return frozenset(tables_of(TENANT))


def distributed_tables() -> frozenset[str]:
    """Tables Citus manages (distributed or reference): its rules for distributed tables apply to them."""
    return frozenset(tables_of(TENANT) + tables_of(REFERENCE))


# --- the procedure ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ForeignKey:
    table: str
    name: str
    definition: str


class NeedsCitus(RuntimeError):
    pass


def _is_citus_available(connection: Connection) -> bool:
    return connection.execute(text(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'citus')")).scalar_one()


def _foreign_keys(connection: Connection, tables: list[str]) -> list[ForeignKey]:
    """Foreign keys from or to the tables Citus takes over: dropped before, added back after."""
    rows = connection.execute(text("""
        SELECT k.conrelid::regclass::text, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k
        WHERE k.contype = 'f' AND (k.conrelid::regclass::text = ANY (:tables)
                                   OR k.confrelid::regclass::text = ANY (:tables))
        ORDER BY 1, 2"""), {"tables": tables}).all()
    return [ForeignKey(*row) for row in rows]


def _already_distributed(connection: Connection) -> set[str]:
    return set(connection.execute(text("SELECT logicalrelid::regclass::text FROM pg_dist_partition")).scalars())


def distribute(engine: Engine, say: Callable[[str], None] = print, coordinator_host: str | None = None) -> None:
    """On a Citus coordinator: reference tables, then every tenant table colocated with `wallets`.

    The foreign keys among these tables are dropped first and added back at the end (Citus distributes a
    table only when every key it has points at a table already distributed or referenced, and a table that
    references a plain table is turned into a Citus local table). Every append-only trigger that is left
    (ledger_entries, grant_draws, invoices, invoice_lines, receipts, credit_notes: each only RAISEs on its
    own table, writing nothing) needs `citus.enable_unsafe_triggers`, set for the database. Raises
    NeedsCitus, changing nothing, when the server has no Citus.
    """
    with engine.connect() as connection:
        if not _is_citus_available(connection):
            raise NeedsCitus("citus-distribute needs Citus: this PostgreSQL server has no citus extension "
                             "(pg_available_extensions); run it against a Citus coordinator. Nothing was changed.")
    missing = sorted(set(TABLE_KINDS) - _existing_tables(engine))
    if missing:
        raise RuntimeError(f"tables named in TABLE_KINDS that do not exist (migrate first): {missing}")
    with engine.begin() as connection:
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS citus"))
        # a coordinator table with a key to a reference table (document_numbers → issuers) becomes a Citus
        # local table, which needs the coordinator in the metadata: at the address the workers reach it by
        # (CITUS_COORDINATOR_HOST, default DATABASE_URL's host and port)
        if not connection.execute(text("SELECT EXISTS (SELECT 1 FROM pg_dist_node WHERE groupid = 0)")).scalar_one():
            host = coordinator_host or engine.url.host or "localhost"
            say(f"coordinator {host}:{engine.url.port or 5432} added to the metadata")
            connection.execute(text("SELECT citus_set_coordinator_host(:host, :port)"),
                               {"host": host, "port": engine.url.port or 5432})
        database = connection.execute(text("SELECT current_database()")).scalar_one()
        # the append-only triggers (RAISE only, on their own table) fire on the shards
        connection.execute(text(f'ALTER DATABASE "{database}" SET citus.enable_unsafe_triggers = on'))
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL citus.enable_unsafe_triggers = on"))
        connection.execute(text("SET LOCAL citus.multi_shard_modify_mode = 'sequential'"))
        done = _already_distributed(connection)
        managed = [t for t in TABLE_KINDS if TABLE_KINDS[t][0] != COORDINATOR]
        keys = _foreign_keys(connection, managed)
        for key in keys:
            connection.execute(text(f'ALTER TABLE {key.table} DROP CONSTRAINT "{key.name}"'))
        for table in tables_of(REFERENCE):
            if table not in done:
                say(f"reference table {table}")
                connection.execute(text("SELECT create_reference_table(:t)"), {"t": table})
        for table in [ANCHOR, *[t for t in tables_of(TENANT) if t != ANCHOR]]:
            if table not in done:
                say(f"distributed table {table} (tenant_id, colocated with {ANCHOR})")
                connection.execute(text("SELECT create_distributed_table(:t, 'tenant_id', colocate_with => :c)"),
                                   {"t": table, "c": "none" if table == ANCHOR else ANCHOR})
        for key in keys:
            connection.execute(text(f'ALTER TABLE {key.table} ADD CONSTRAINT "{key.name}" {key.definition}'))
    say(f"{len(tables_of(REFERENCE))} reference tables, {len(tables_of(TENANT))} tenant tables distributed")


def _existing_tables(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())


def main() -> int:
    from billing_core.bootstrap import runtime

    try:
        distribute(runtime().engine, coordinator_host=runtime().settings.citus_coordinator_host)
    except NeedsCitus as exc:
        print(f"citus-distribute: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
