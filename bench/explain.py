"""`EXPLAIN (ANALYZE, BUFFERS)` of the statements LAD's hot paths really send, for bench/PROFILE.md.

Run against a migrated database (the bench's, or `make run`'s):
    DATABASE_URL=... python -m bench.explain

It calls the domain functions in-process, the way the web and worker processes do (accept 1,000
charges of one tenant in one batch, settle a group of them, read the wallet), and for every statement
they execute first runs the same statement with the same parameters under `EXPLAIN (ANALYZE, BUFFERS)`
inside a savepoint that is rolled back, so the plan is of the real statement on the real rows and the
real statement then runs as usual. Prints the statements by execution time, with their plans.
"""
from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any

from sqlalchemy import event

from billing_core.db import UnitOfWork, engine_for
from billing_core.ledger import credits, expiry
from billing_core.ledger.commands import TopUpRequest
from billing_core.usage import charging, events
from billing_core.usage.commands import ChargeRequest

ITEM = {"category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second", "quantity": "100"}


class Explainer:
    def __init__(self, engine: Any):
        self.engine, self.plans, self.phase = engine, [], ""

    def __enter__(self) -> Explainer:
        event.listen(self.engine, "before_cursor_execute", self._explain)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._explain)

    def _explain(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        head = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
        if executemany or head not in ("SELECT", "INSERT", "UPDATE", "WITH", "DELETE") or not self.phase:
            return
        cursor.execute("SAVEPOINT bench_explain")
        try:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            plan = [row[0] for row in cursor.fetchall()]
        finally:
            cursor.execute("ROLLBACK TO SAVEPOINT bench_explain")
        took = next((float(m.group(1)) for line in plan if (m := re.match(r"Execution Time: ([0-9.]+) ms", line))), 0.0)
        self.plans.append((self.phase, took, statement, plan))


def main() -> int:
    if "DATABASE_URL" in os.environ:
        return explain(os.environ["DATABASE_URL"])
    from bench.run import Bench  # a throwaway database on the bench's embedded servers

    bench = Bench()
    bench.stack.start_servers()
    try:
        bench.stack.migrate()
        return explain(bench.stack.env["DATABASE_URL"])
    finally:
        from billing_core.db import dispose_engines
        from devstack.stack import drop_database

        dispose_engines()
        drop_database(bench.stack.server_url, bench.stack.database_name)
        if bench.stack.servers is not None:
            bench.stack.servers.stop()


def explain(database_url: str) -> int:
    engine = engine_for(database_url)
    tenant = f"explain-{uuid.uuid4().hex[:6]}"
    history = int(os.environ.get("EXPLAIN_HISTORY", "0"))
    if history:  # a tenant with that many charged events loaded after the last ANALYZE (bench/run.py's scenario)
        tenant = _stale_history(engine, history)
    with UnitOfWork(engine) as uow:
        credits.top_up(uow, tenant, TopUpRequest.model_validate(
            {"amount": "1000000", "idempotencyKey": f"fund-{tenant}"}), created_by="bench")
    with UnitOfWork(engine) as uow:  # warm: the catalog cache, the plans
        events.accept_charges(uow, tenant, [ChargeRequest.model_validate(
            {"featureKey": "warm", "idempotencyKey": f"warm-{i}", "items": [ITEM]}) for i in range(10)], user_id="b")
    backlog = int(os.environ.get("EXPLAIN_BACKLOG", "20000"))  # the hot wallet's events before these
    for start in range(0, backlog, 1000):
        with UnitOfWork(engine) as uow:
            events.accept_charges(uow, tenant, [ChargeRequest.model_validate(
                {"featureKey": "backlog", "idempotencyKey": f"backlog-{i}", "items": [ITEM]})
                for i in range(start, start + 1000)], user_id="b")
        if start % 2000 == 0:
            with UnitOfWork(engine) as uow:
                charging.charge_pending_batch(uow, tenant, 500)
    with Explainer(engine) as explainer:
        commands = [ChargeRequest.model_validate({"featureKey": "bench", "idempotencyKey": f"{tenant}-{i}",
                                                  "items": [ITEM]}) for i in range(1000)]
        explainer.phase = "accept 1,000 (POST /charges)"
        started = time.perf_counter()
        with UnitOfWork(engine) as uow:
            events.accept_charges(uow, tenant, commands, user_id="bench")
        print(f"accept: {time.perf_counter() - started:.3f} s with EXPLAIN")
        explainer.phase = "settle a group of 500 (worker)"
        with UnitOfWork(engine) as uow:
            charging.charge_pending_batch(uow, tenant, 500)
        explainer.phase = "GET /wallet"
        with UnitOfWork(engine) as uow:
            expiry.end_due_and_read_wallet(uow, tenant)
    for phase in dict.fromkeys(p for p, *_ in explainer.plans):
        print(f"\n===== {phase}")
        for _, took, statement, plan in sorted((p for p in explainer.plans if p[0] == phase), key=lambda p: -p[1]):
            print(f"\n--- {took:.2f} ms: {' '.join(statement.split())[:300]}")
            print("\n".join(plan))
    print("\nstatements per phase:", {p: sum(1 for q in explainer.plans if q[0] == p)
                                      for p in dict.fromkeys(p for p, *_ in explainer.plans)})
    return 0


def _stale_history(engine: Any, events: int) -> str:
    from sqlalchemy import text

    from bench import invoices as invoice_bench

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in (*invoice_bench.LOADED_TABLES, "wallets"):
            connection.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = off)"))
            connection.execute(text(f"ANALYZE {table}"))
    period = invoice_bench.invoices.Period.containing(invoice_bench.database_now(engine)).previous().previous()
    tag = f"hist{uuid.uuid4().hex[:6]}"
    print(invoice_bench.generate(engine, events=events, tenants=1, period_start=period.start, period_end=period.end,
                                 tag=tag, analyze=False))
    return f"inv-{tag}-1"


if __name__ == "__main__":
    raise SystemExit(main())
