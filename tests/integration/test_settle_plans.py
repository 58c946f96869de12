"""The group commit's plans do not depend on fresh statistics (issue 23).

A tenant whose history arrived in a burst the statistics have not seen yet (ANALYZE ran before the
load, autovacuum is off meanwhile) settles a group of pending charges: every statement the settle
sends to usage_events and usage_event_items must reach its rows by key, reading about as many index
entries as the group has rows, never the tenant's history (through `usage_events_tenant_time` or any
other tenant-wide scan). Checked with EXPLAIN (ANALYZE) on the statements charge_pending_batch really
sends, with their real parameters, in a savepoint that is rolled back.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text

from billing_core.db import UnitOfWork
from billing_core.ledger.commands import TopUpRequest
from billing_core.ledger.credits import top_up
from billing_core.usage import charging, events
from billing_core.usage.commands import ChargeRequest
from tests.support.helpers import stt_items

HISTORY = 60_000  # charged events already in the tenant's history, unseen by the statistics
GROUP = 200  # pending events settled in the group under test
TABLES = ("usage_events", "usage_event_items")


@pytest.fixture
def stale_history(engine) -> Iterator[str]:
    """A funded tenant with HISTORY charged events (one item each) loaded after the last ANALYZE."""
    tenant = f"stale-{uuid.uuid4().hex[:8]}"
    with UnitOfWork(engine) as uow:
        top_up(uow, tenant, TopUpRequest(amount="1000000", idempotencyKey="fund"), created_by="test")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in TABLES:
            connection.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = off)"))
            connection.execute(text(f"ANALYZE {table}"))  # statistics from before the burst
    try:
        with engine.begin() as connection:
            connection.execute(text("""
                INSERT INTO usage_events (id, tenant_id, task_id, feature_key, idempotency_key, user_id, status,
                                          total_cost, currency, metadata, created_at, charged_at, enqueued_at,
                                          enqueue_count, occurred_at)
                SELECT md5(:t || n)::uuid, :t, gen_random_uuid(), 'history', 'history-' || n, 'test', 'charged',
                       0.01, 'USD', '{}'::jsonb, t, t, t, 1, t
                FROM (SELECT n, now() - interval '20 days' + n * interval '10 milliseconds' AS t
                      FROM generate_series(1, :n) AS n) AS s"""), {"t": tenant, "n": HISTORY})
            connection.execute(text("""
                INSERT INTO usage_event_items (id, tenant_id, usage_event_id, position, category, provider, model,
                                               unit, quantity, unit_price, cost)
                SELECT gen_random_uuid(), :t, md5(:t || n)::uuid, 0, 'stt', 'openai', 'whisper-1', 'second', 100,
                       0.0001, 0.01
                FROM generate_series(1, :n) AS n"""), {"t": tenant, "n": HISTORY})
        yield tenant
    finally:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for table in TABLES:
                connection.execute(text(f"ALTER TABLE {table} RESET (autovacuum_enabled)"))


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


class Plans:
    """EXPLAIN (ANALYZE, FORMAT JSON) of every statement on TABLES, before it runs for real."""

    def __init__(self) -> None:
        self.found: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        head = statement.lstrip().split(None, 1)[0].upper()
        if many or head not in ("SELECT", "UPDATE", "WITH", "INSERT", "DELETE") \
                or not any(table in statement for table in TABLES):
            return
        cursor.execute("SAVEPOINT plans")
        try:
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
            plan = cursor.fetchone()[0]
        finally:
            cursor.execute("ROLLBACK TO SAVEPOINT plans")
        self.found.append((" ".join(statement.split()), plan[0]["Plan"] if isinstance(plan, list)
                           else json.loads(plan)[0]["Plan"]))


def test_settling_finds_its_rows_by_key_when_statistics_have_not_seen_the_history(engine, stale_history):
    tenant = stale_history
    with UnitOfWork(engine) as uow:
        events.accept_charges(uow, tenant, [
            ChargeRequest.model_validate({"featureKey": "f", "idempotencyKey": f"k-{i}", "items": stt_items("100")})
            for i in range(GROUP)], user_id="test")
    plans = Plans()
    event.listen(engine, "before_cursor_execute", plans)
    try:
        with UnitOfWork(engine) as uow:
            settled = charging.charge_pending_batch(uow, tenant, GROUP)
    finally:
        event.remove(engine, "before_cursor_execute", plans)
    assert len(settled) == GROUP and {s.status for s in settled} == {"charged"}

    kinds = {"settle": "UPDATE usage_events AS e", "items": "FROM usage_event_items"}
    for kind, marker in kinds.items():
        assert any(marker in statement for statement, _ in plans.found), f"no {kind} statement was sent"
    offenders = []
    for statement, plan in plans.found:
        nodes = list(_nodes(plan))
        # index entries and rows read from the two tables, kept or filtered out: about the group, not the history
        read = sum(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) + n.get("Rows Removed by Filter", 0)
                   + n.get("Rows Removed by Index Recheck", 0)
                   for n in nodes if n.get("Relation Name") in TABLES or n.get("Index Name", "").startswith(TABLES))
        if read > 4 * GROUP or any(n.get("Index Name") == "usage_events_tenant_time" for n in nodes) \
                or any(n["Node Type"] == "Seq Scan" and n.get("Relation Name") in TABLES for n in nodes):
            offenders.append(f"{read:,} rows read by {statement[:120]}…\n" + "\n".join(
                f"  {n['Node Type']} {n.get('Relation Name', '')} {n.get('Index Name', '')} "
                f"rows={n.get('Actual Rows')}x{n.get('Actual Loops')} removed={n.get('Rows Removed by Filter', 0)}"
                for n in nodes))
    assert not offenders, "\n".join(offenders)
