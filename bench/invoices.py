"""The invoice rollup at scale, for `make bench`: a month of usage generated straight into the database
with set-based SQL, then the rollup of that month timed while charging keeps running.

The generated history is what the charging path writes, at volume: per tenant a wallet, a paid top-up
before the month (the opening balance) and one in the middle of it, and usage events (1 or 2 items
each, over four features, six models and four units) each with its debit ledger entry, the entries of
a wallet forming an unbroken balance chain in `seq` order with times increasing through the month.
One event in a hundred was accepted in the month before and charged in this one (a prior-period
line). Nothing is computed row by row in Python: each table is one INSERT ... SELECT over
generate_series, and the balances come from closed-form running sums of a 14-event cost cycle.

Run on its own against an existing database (DATABASE_URL, migrated):
    python -m bench.invoices --events 1000000 --tenants 1000
"""
from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text

from billing_core.db import UnitOfWork
from billing_core.invoicing import invoices

# the cost cycle: variant v of a tenant's j-th event is j % 14; its items
VARIANTS: list[tuple[int, str, list[tuple[str, str, str, str, str, str]]]] = [
    # v, feature, [(category, provider, model, unit, quantity, unit price)]
    (0, "transcribe", [("stt", "openai", "whisper-1", "second", "37", "0.0001")]),
    (1, "transcribe", [("stt", "openai", "whisper-1", "second", "125", "0.0001")]),
    (2, "transcribe", [("stt", "deepgram", "nova-2", "second", "61", "0.0000725")]),
    (3, "transcribe", [("stt", "deepgram", "nova-2", "second", "300", "0.0000725")]),
    (4, "chat", [("llm", "openai", "gpt-4o", "input_token", "1200", "0.0000025"),
                 ("llm", "openai", "gpt-4o", "output_token", "350", "0.00001")]),
    (5, "chat", [("llm", "openai", "gpt-4o-mini", "input_token", "900", "0.00000015"),
                 ("llm", "openai", "gpt-4o-mini", "output_token", "410", "0.0000006")]),
    (6, "chat", [("llm", "openai", "gpt-4o", "input_token", "3100", "0.0000025"),
                 ("llm", "openai", "gpt-4o", "output_token", "95", "0.00001")]),
    (7, "speak", [("tts", "elevenlabs", "turbo-v2", "character", "480", "0.00003")]),
    (8, "speak", [("tts", "elevenlabs", "turbo-v2", "character", "1333", "0.00003")]),
    (9, "transcribe", [("stt", "openai", "whisper-1", "second", "9", "0.0001")]),
    (10, "chat", [("llm", "openai", "gpt-4o-mini", "input_token", "15000", "0.00000015"),
                  ("llm", "openai", "gpt-4o-mini", "output_token", "2200", "0.0000006")]),
    (11, "agent", [("llm", "openai", "gpt-4o", "input_token", "800", "0.0000025")]),
    (12, "agent", [("llm", "openai", "gpt-4o", "output_token", "777", "0.00001")]),
    (13, "speak", [("tts", "elevenlabs", "turbo-v2", "character", "64", "0.00003")]),
]
CYCLE = len(VARIANTS)
OPENING_TOPUP = Decimal("1000000")
MID_TOPUP = Decimal("5000")


def _variant_rows() -> tuple[str, dict[str, Any]]:
    """VALUES of the cost cycle: per variant its cost and the cost of the variants before it."""
    costs = [sum((Decimal(q) * Decimal(p) for *_, q, p in items), Decimal(0)) for _, _, items in VARIANTS]
    rows, params = [], {}
    for v, feature, _ in VARIANTS:
        rows.append(f"(:v{v}, :f{v}, CAST(:c{v} AS numeric), CAST(:p{v} AS numeric))")
        params.update({f"v{v}": v, f"f{v}": feature, f"c{v}": str(costs[v]), f"p{v}": str(sum(costs[:v], Decimal(0)))})
    item_rows = []
    for v, _, items in VARIANTS:
        for position, (category, provider, model, unit, quantity, price) in enumerate(items):
            key = f"{v}_{position}"
            item_rows.append(f"(:iv{key}, :ip{key}, :ic{key}, :ipr{key}, :im{key}, :iu{key}, "
                             f"CAST(:iq{key} AS numeric), CAST(:ipp{key} AS numeric))")
            params.update({f"iv{key}": v, f"ip{key}": position, f"ic{key}": category, f"ipr{key}": provider,
                           f"im{key}": model, f"iu{key}": unit, f"iq{key}": quantity, f"ipp{key}": price})
    params["cycle_cost"] = str(sum(costs, Decimal(0)))
    return (f"CREATE TEMP TABLE bench_variant (v, feature, cost, cost_before) ON COMMIT DROP AS VALUES {', '.join(rows)};"
            f"CREATE TEMP TABLE bench_variant_item (v, position, category, provider, model, unit, quantity, unit_price)"
            f" ON COMMIT DROP AS VALUES {', '.join(item_rows)};"), params


GENERATE = """
SET LOCAL statement_timeout = 0;
SET LOCAL work_mem = '256MB';
{variants}
-- the timeline: event j of tenant t is global event g = j * tenants + t - 1, at a time increasing with g
CREATE TEMP TABLE bench_event ON COMMIT DROP AS
SELECT g, t, j, j % {cycle} AS v,
       'inv-{tag}-' || t AS tenant_id,
       md5('w{tag}' || t)::uuid AS wallet_id,
       md5('e{tag}' || g)::uuid AS id,
       CAST(:start AS timestamptz) + interval '1 hour' + (g * CAST(:step_us AS bigint)) * interval '1 microsecond' AS charged_at,
       -- cumulative cost of this tenant's events before this one (closed form over the cycle)
       (j / {cycle}) * CAST(:cycle_cost AS numeric) AS whole_cycles
FROM (SELECT g, g % :tenants + 1 AS t, g / :tenants AS j FROM generate_series(CAST(0 AS bigint), :events - 1) AS g) AS s;

INSERT INTO wallets (id, tenant_id, currency, current_balance, reserved_balance, overdraft_limit, status,
                     created_at, updated_at)
SELECT md5('w{tag}' || t)::uuid, 'inv-{tag}-' || t, 'USD',
       CAST(:opening AS numeric) + CAST(:mid AS numeric)
         - ((:per_tenant / {cycle}) * CAST(:cycle_cost AS numeric)
            + coalesce((SELECT sum(cost) FROM bench_variant WHERE v < :per_tenant % {cycle}), 0)),
       0, 0, 'active', CAST(:start AS timestamptz) - interval '10 days', now()
FROM generate_series(1, :tenants) AS t;

-- the credits behind each balance: the opening grant (what the debits drew) and the mid-month one
INSERT INTO credit_grants (id, tenant_id, wallet_id, kind, amount, remaining, priority, source, reference,
                           created_at, updated_at)
SELECT md5('go{tag}' || w.t)::uuid, w.tenant_id, w.id, 'paid', CAST(:opening AS numeric),
       w.current_balance - CAST(:mid AS numeric), 50, 'topup', 'open-' || w.t,
       CAST(:start AS timestamptz) - interval '10 days', now()
FROM (SELECT t, 'inv-{tag}-' || t AS tenant_id, md5('w{tag}' || t)::uuid AS id,
             (SELECT current_balance FROM wallets WHERE id = md5('w{tag}' || t)::uuid) AS current_balance
      FROM generate_series(1, :tenants) AS t) AS w
UNION ALL
SELECT md5('gm{tag}' || t)::uuid, 'inv-{tag}-' || t, md5('w{tag}' || t)::uuid, 'paid', CAST(:mid AS numeric),
       CAST(:mid AS numeric), 50, 'topup', 'mid-' || t, CAST(:start AS timestamptz) + interval '14 days', now()
FROM generate_series(1, :tenants) AS t;

-- occurred_at = created_at, as the BEFORE INSERT trigger of migration 0030 sets it (the replica role
-- of a bulk load skips triggers)
INSERT INTO usage_events (id, tenant_id, task_id, feature_key, idempotency_key, user_id, status, total_cost,
                          currency, metadata, created_at, charged_at, enqueued_at, enqueue_count, occurred_at)
SELECT id, tenant_id, task_id, feature, idempotency_key, 'bench', 'charged', cost, 'USD', '{{}}'::jsonb,
       created_at, charged_at, charged_at - interval '40 milliseconds', 1, created_at
FROM (
    SELECT e.id, e.tenant_id, md5('k{tag}' || e.g)::uuid AS task_id, bv.feature, 'bench-' || e.g AS idempotency_key,
           bv.cost, e.charged_at, e.g,
           CASE WHEN e.j % 100 = 50 THEN CAST(:start AS timestamptz) - interval '2 days' + e.g * interval '1 microsecond'
                ELSE e.charged_at - interval '40 milliseconds' END AS created_at
    FROM bench_event e JOIN bench_variant bv ON bv.v = e.v
) AS events
ORDER BY g;

INSERT INTO usage_event_items (id, tenant_id, usage_event_id, position, category, provider, model, unit,
                               quantity, unit_price, cost)
SELECT md5('i{tag}' || e.g || '-' || i.position)::uuid, e.tenant_id, e.id, i.position, i.category, i.provider,
       i.model, i.unit, i.quantity, i.unit_price, i.quantity * i.unit_price
FROM bench_event e JOIN bench_variant_item i ON i.v = e.v
ORDER BY e.g, i.position;

-- ledger entries in time order, so `seq` follows each wallet's chain: the opening top-ups (before the
-- month), then every event's debit with each tenant's mid-month top-up just before its event j = half
INSERT INTO ledger_entries (id, tenant_id, wallet_id, entry_type, amount, balance_before, balance_after,
                            usage_event_id, grant_id, reference, description, idempotency_key, created_by, created_at)
SELECT id, tenant_id, wallet_id, entry_type, amount, balance_before, balance_before + amount, usage_event_id,
       grant_id, reference, description, idempotency_key, 'bench', created_at
FROM (
    SELECT md5('o{tag}' || t)::uuid AS id, 'inv-{tag}-' || t AS tenant_id, md5('w{tag}' || t)::uuid AS wallet_id,
           'topup' AS entry_type, CAST(:opening AS numeric) AS amount, CAST(0 AS numeric) AS balance_before,
           NULL::uuid AS usage_event_id, md5('go{tag}' || t)::uuid AS grant_id, 'open-' || t AS reference,
           'opening top-up' AS description,
           'open-' || t AS idempotency_key,
           CAST(:start AS timestamptz) - interval '10 days' + t * interval '1 millisecond' AS created_at,
           -1 AS ord_j, t AS ord_t
    FROM generate_series(1, :tenants) AS t
    UNION ALL
    SELECT md5('m{tag}' || e.t)::uuid, e.tenant_id, e.wallet_id, 'topup', CAST(:mid AS numeric),
           CAST(:opening AS numeric) - (e.whole_cycles + bv.cost_before), NULL, md5('gm{tag}' || e.t)::uuid,
           'mid-' || e.t, 'mid-month top-up',
           'mid-' || e.t, e.charged_at - interval '20 milliseconds', e.j, 0
    FROM bench_event e JOIN bench_variant bv ON bv.v = e.v
    WHERE e.j = :per_tenant / 2
    UNION ALL
    SELECT md5('l{tag}' || e.g)::uuid, e.tenant_id, e.wallet_id, 'debit', -bv.cost,
           CAST(:opening AS numeric) + CASE WHEN e.j >= :per_tenant / 2 THEN CAST(:mid AS numeric) ELSE 0 END
             - (e.whole_cycles + bv.cost_before),
           e.id, NULL, NULL, bv.feature || ' usage', 'bench-' || e.g, e.charged_at, e.j, e.t
    FROM bench_event e JOIN bench_variant bv ON bv.v = e.v
) AS timeline
ORDER BY ord_j, ord_t;
"""


LOADED_TABLES = ("usage_events", "usage_event_items", "ledger_entries")


def _detach_indexes(connection: Any, tables: tuple[str, ...]) -> list[str]:
    """Drop the indexes and unique constraints of `tables` that no foreign key depends on; returns the
    statements that create them again, exactly as they were."""
    rows = connection.execute(text("""
        SELECT t.relname AS table_name, i.indexrelid::regclass::text AS index_name,
               pg_get_indexdef(i.indexrelid) AS index_def, c.conname, pg_get_constraintdef(c.oid) AS constraint_def
        FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u')
        WHERE t.relname = ANY(:tables) AND t.relnamespace = 'public'::regnamespace
          AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = i.indexrelid)
        ORDER BY t.relname, i.indexrelid
    """), {"tables": list(tables)}).all()
    rebuild = []
    for row in rows:
        if row.conname:
            connection.execute(text(f'ALTER TABLE {row.table_name} DROP CONSTRAINT "{row.conname}"'))
            rebuild.append(f'ALTER TABLE {row.table_name} ADD CONSTRAINT "{row.conname}" {row.constraint_def}')
        else:
            connection.execute(text(f"DROP INDEX {row.index_name}"))
            rebuild.append(row.index_def)
    return rebuild


def generate(engine: Engine, *, events: int, tenants: int, period_start: datetime, period_end: datetime,
             tag: str, verbose: bool = False, analyze: bool = True) -> dict[str, Any]:
    """Write `events` charged usage events spread over `tenants` (events rounded down to a multiple of
    tenants) into the month [period_start, period_end); returns counts and seconds taken. Without
    `analyze` the tables are vacuumed but their statistics are left as they were before the load."""
    per_tenant = events // tenants
    events = per_tenant * tenants
    variants, params = _variant_rows()
    span = (period_end - period_start - timedelta(hours=2)) // timedelta(microseconds=1)
    params.update(start=period_start, events=events, tenants=tenants, per_tenant=per_tenant,
                  step_us=span // max(events, 1), opening=str(OPENING_TOPUP), mid=str(MID_TOPUP))
    started = time.perf_counter()
    with engine.begin() as connection:
        # a bulk load: skip the per-row foreign-key triggers (every reference is generated consistent),
        # and build the indexes nothing references once, after the rows are in, instead of row by row
        replica = connection.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar()
        if replica:
            connection.execute(text("SET LOCAL session_replication_role = replica"))
        # the charging path locks usage_events before it reads items or writes the ledger: taking them in
        # that order waits for any charge in flight instead of deadlocking with it
        connection.execute(text("LOCK TABLE usage_events, usage_event_items, ledger_entries IN ACCESS EXCLUSIVE MODE"))
        rebuild = _detach_indexes(connection, LOADED_TABLES)
        for statement in GENERATE.format(variants=variants, cycle=CYCLE, tag=tag).split(";\n"):
            if statement.strip():
                began = time.perf_counter()
                connection.execute(text(statement), params)
                if verbose:
                    print(f"  {time.perf_counter() - began:6.1f} s  {statement.strip().splitlines()[-1][:70]}")
        began = time.perf_counter()
        connection.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
        connection.execute(text("SET LOCAL max_parallel_maintenance_workers = 2"))
        for statement in rebuild:
            connection.execute(text(statement))
        if verbose:
            print(f"  {time.perf_counter() - began:6.1f} s  rebuilding {len(rebuild)} indexes and constraints")
    loaded = time.perf_counter() - started
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("SET statement_timeout = 0"))
        for table in ("ledger_entries", "usage_events", "usage_event_items", "wallets"):
            # as autovacuum would have, in a month (or its vacuum only: statistics that lag a burst)
            connection.execute(text(f"VACUUM (ANALYZE) {table}" if analyze else f"VACUUM {table}"))
        connection.execute(text("RESET statement_timeout"))
    return {"events": events, "tenants": tenants, "load_seconds": round(loaded, 1),
            "vacuum_seconds": round(time.perf_counter() - started - loaded, 1)}


def expected_totals(engine: Engine, tag: str, period_start: datetime, period_end: datetime) -> dict[str, Decimal]:
    """What the generated month must invoice, straight from the generated rows."""
    with engine.connect() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        row = connection.execute(text("""
            SELECT count(*) AS debits, -sum(amount) AS usage
            FROM ledger_entries WHERE tenant_id LIKE :prefix AND entry_type = 'debit'
              AND created_at >= :start AND created_at < :end
        """), {"prefix": f"inv-{tag}-%", "start": period_start, "end": period_end}).one()
    return {"debits": Decimal(row.debits), "usage": row.usage}


def measure_rollup(engine: Engine, period: invoices.Period, tag: str) -> dict[str, Any]:
    """Run the monthly rollup for every tenant of the period and check what it wrote."""
    started = time.perf_counter()
    with UnitOfWork(engine) as uow:
        result = invoices.rollup(uow, period)
    seconds = time.perf_counter() - started
    with engine.connect() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        check = connection.execute(text("""
            SELECT count(*) AS invoices, sum(usage_exact) AS usage, sum(total_usage) AS rounded,
                   sum(usage_line_count + credit_line_count) AS lines,
                   count(*) FILTER (WHERE opening_balance + total_credits - usage_exact <> closing_balance) AS off,
                   (SELECT count(*) FROM invoice_lines l JOIN invoices i2 ON i2.id = l.invoice_id
                    WHERE i2.period = :period AND i2.tenant_id LIKE :prefix) AS stored_lines,
                   (SELECT count(*) FROM invoice_lines l JOIN invoices i2 ON i2.id = l.invoice_id
                    WHERE i2.period = :period AND i2.tenant_id LIKE :prefix AND l.prior_period) AS prior_lines
            FROM invoices WHERE period = :period AND tenant_id LIKE :prefix
        """), {"period": period.first_day, "prefix": f"inv-{tag}-%"}).one()
    return {"seconds": round(seconds, 2), "invoices_created": len(result.created),
            "lines_created": result.lines_created, "invoices": check.invoices, "lines": check.stored_lines,
            "prior_period_lines": check.prior_lines, "usage": check.usage, "rounded_usage": check.rounded,
            "not_reconciled": check.off}


def plain_group_by(engine: Engine, period: invoices.Period) -> float:
    """Seconds for the plain GROUP BY over the rows the rollup reads (the month's charged events and
    their items, by tenant, feature and price), with the rollup's session settings: the yardstick."""
    started = time.perf_counter()
    with engine.connect() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 0"))
        connection.execute(text("SET LOCAL work_mem = '256MB'"))
        connection.execute(text("SET LOCAL jit = off"))
        connection.execute(text("""
            SELECT i.tenant_id, e.feature_key, i.category, i.provider, i.model, i.unit, i.unit_price,
                   count(*), sum(i.quantity), sum(i.cost)
            FROM usage_events e JOIN usage_event_items i ON i.usage_event_id = e.id
            WHERE e.status = 'charged' AND e.charged_at >= :start AND e.charged_at < :end
            GROUP BY 1, 2, 3, 4, 5, 6, 7
        """), {"start": period.start, "end": period.end}).all()
        connection.rollback()
    return time.perf_counter() - started


def free_disk_gb(path: str = "/work") -> int:
    return shutil.disk_usage(path).free // 2**30


# what a million generated events take on disk (tables, indexes, WAL while loading), measured: ~1.1 GB
GB_PER_MILLION_EVENTS = 2
DISK_RESERVE_GB = 5
LOAD_RATE = int(os.environ.get("BENCH_INVOICE_CHARGE_RATE", "2000"))  # charges/s offered during the rollup
LOAD_BATCH = 500


class BackgroundCharging:
    """Charges over HTTP (POST /charges, batches of 500) at a steady offered rate, settled by the live
    worker, for as long as the block runs: the rollup is measured while charging goes on."""

    def __init__(self, bench: Any, bearer: str, tenant: str, rate: int = LOAD_RATE, seconds: int = 180):
        self.bench, self.bearer, self.tenant, self.rate = bench, bearer, tenant, rate
        self.bodies = bench.batch_bodies(tenant, rate * seconds, LOAD_BATCH, f"{tenant}-{uuid.uuid4().hex[:6]}")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def _run(self) -> None:
        from bench.run import Http

        client, started = Http(self.bench.port, self.bearer), time.perf_counter()
        for i, body in enumerate(self.bodies):
            pause = started + i * LOAD_BATCH / self.rate - time.perf_counter()
            if pause > 0 and self.stop.wait(pause):
                return
            if self.stop.is_set():
                return
            status, answer = client.post("/api/billing/charges", body)
            assert status == 202, answer[:300]
            self.sent += LOAD_BATCH

    def __enter__(self) -> BackgroundCharging:
        self.thread.start()
        time.sleep(2)  # charging is under way before the clock starts
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def wait_until_nothing_pending(engine: Engine, timeout: int = 600) -> None:
    """The scenarios before this one leave no charge to settle while the tables are bulk-loaded."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as connection:
            pending = connection.execute(text("SELECT count(*) FROM usage_events WHERE status = 'pending'")).scalar_one()
        if pending == 0 or time.monotonic() > deadline:
            return
        time.sleep(1)


def charged_between(engine: Engine, tenant: str, start: datetime, end: datetime) -> int:
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT count(*) FROM usage_events WHERE tenant_id = :t AND status = 'charged' "
            "AND charged_at >= :start AND charged_at < :end"), {"t": tenant, "start": start, "end": end}).scalar_one()


def database_now(engine: Engine) -> datetime:
    with engine.connect() as connection:
        return connection.execute(text("SELECT clock_timestamp()")).scalar_one()


def scenario(bench: Any, token: Callable[..., str]) -> dict[str, Any]:
    """`make bench`: the rollup of 1,000,000 events (two months ago) and of BENCH_INVOICE_EVENTS (default
    10,000,000; 0 skips it; last month) over BENCH_INVOICE_TENANTS tenants (default 1,000), each
    generated in the bench database, timed while charges keep arriving over HTTP."""
    engine = bench.engine
    tenants = int(os.environ.get("BENCH_INVOICE_TENANTS", "1000"))
    # each size in a month of its own, older first: a month's opening top-ups are dated in the month
    # before it, so the older month is invoiced before the newer one's data exists
    current = invoices.Period.containing(database_now(engine))
    sizes = [(1_000_000, current.previous().previous())]
    big = int(os.environ.get("BENCH_INVOICE_EVENTS", "10000000"))
    if big:
        sizes.append((big, current.previous()))
    loader = "invoice-load"
    bench.fund([loader])
    results: dict[str, Any] = {"tenants": tenants, "cpus": os.cpu_count(), "offered_charges_per_s": LOAD_RATE}
    for events, period in sizes:
        name = f"events_{events}"
        needed = events * GB_PER_MILLION_EVENTS // 1_000_000 + DISK_RESERVE_GB
        free = free_disk_gb()
        if free < needed:
            results[name] = {"skipped": f"{free} GB free on /work, about {needed} GB needed"}
            print(f"invoice rollup of {events:,} events skipped: {results[name]['skipped']}")
            continue
        tag = uuid.uuid4().hex[:6]
        wait_until_nothing_pending(engine)
        print(f"invoice rollup: generating {events:,} events over {tenants:,} tenants in {period.label} "
              f"({free} GB free)")
        generated = generate(engine, events=events, tenants=tenants, period_start=period.start,
                             period_end=period.end, tag=tag)
        expected = expected_totals(engine, tag, period.start, period.end)
        with BackgroundCharging(bench, token(loader, "billing.charge"), loader) as load:
            window_start = database_now(engine)
            measured = measure_rollup(engine, period, tag)
            window_end = database_now(engine)
            plain = plain_group_by(engine, period)  # while charging too, like the rollup
        charged = charged_between(engine, loader, window_start, window_end)
        window = (window_end - window_start).total_seconds()
        results[name] = {
            "period": period.label, "seconds": measured["seconds"], "invoices": measured["invoices"],
            "lines": measured["lines"], "prior_period_lines": measured["prior_period_lines"],
            "reconciled": measured["not_reconciled"] == 0 and measured["usage"] == expected["usage"]
            and measured["invoices"] == tenants,
            "usage": str(measured["usage"]), "rounded_usage": str(measured["rounded_usage"]),
            "plain_group_by_seconds": round(plain, 2), "ratio_to_plain": round(measured["seconds"] / plain, 2),
            "charged_during_rollup_per_s": round(charged / window, 1) if window > 0 else None,
            "charges_sent_during": load.sent, "generate_seconds": generated["load_seconds"],
        }
        print(f"invoice rollup of {events:,} events: {results[name]}")
    bench.wait_settled([loader])
    return results


def main() -> int:
    from billing_core.bootstrap import settings as service_settings
    from billing_core.db import engine_for

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_INVOICE_EVENTS", "1000000")))
    parser.add_argument("--tenants", type=int, default=1000)
    args = parser.parse_args()
    engine = engine_for(service_settings().database_url)
    with engine.connect() as connection:
        now = connection.execute(text("SELECT now()")).scalar_one()
    period = invoices.previous_period(now)
    tag = uuid.uuid4().hex[:6]
    print(f"free disk {free_disk_gb()} GB; generating {args.events:,} events over {args.tenants:,} tenants "
          f"in {period.label}")
    print(generate(engine, events=args.events, tenants=args.tenants, period_start=period.start,
                   period_end=period.end, tag=tag))
    expected = expected_totals(engine, tag, period.start, period.end)
    measured = measure_rollup(engine, period, tag)
    print({**measured, "expected_usage": expected["usage"], "cores": os.cpu_count()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

