"""The statement check (tests/support/citus_rules.py): each of the eight failures a real Citus 13 cluster
found in LAD's SQL (issue 26) is a statement the check rejects, with the rule that names Citus's error; the
statements that replaced them pass."""
from __future__ import annotations

import pytest

from tests.support.citus_rules import LogStatements, check_log, check_statement, trigger_violations

# 1. the catalog revision bumped by a trigger on prices (and price_adjustments, provider_costs)
CATALOG_TRIGGER = ("price_adjustments", "price_adjustments_changed", "prices_bump_catalog_revision",
                   "\nBEGIN\n    UPDATE catalog_revision SET revision = revision + 1;\n    RETURN NULL;\nEND;\n",
                   "plpgsql")
APPEND_ONLY_TRIGGER = ("ledger_entries", "ledger_entries_no_update_delete", "ledger_entries_append_only",
                       "\nBEGIN\n    RAISE EXCEPTION '% on % refused: the ledger is append-only', TG_OP, TG_TABLE_NAME\n"
                       "        USING ERRCODE = 'insufficient_privilege';\nEND;\n", "plpgsql")

REJECTED = {
    # 2. the group-commit settle
    "mutable-in-case": """
        UPDATE usage_events AS e SET status = rows.status,
            charged_at = CASE WHEN rows.status = 'charged' THEN now() END
        FROM unnest(ARRAY['a']::uuid[], ARRAY['charged']) AS rows (id, status)
        WHERE e.tenant_id = 't-1' AND e.id = rows.id""",
    # 3. entitlement's constant subquery LEFT JOIN wallets
    "recurring-outer-join": """
        SELECT w.current_balance, b.monthly_limit
        FROM (SELECT CAST('t-1' AS TEXT) AS tenant_id) AS t
        LEFT OUTER JOIN wallets AS w ON w.tenant_id = t.tenant_id
        LEFT OUTER JOIN budgets AS b ON b.tenant_id = t.tenant_id AND b.feature_key = 'x'""",
    # 4. a cross-tenant FOR UPDATE SKIP LOCKED scan (the pending sweep)
    "cross-tenant-lock": """
        UPDATE usage_events SET enqueued_at = now(), enqueue_count = usage_events.enqueue_count + 1
        WHERE usage_events.id IN (SELECT usage_events.id FROM usage_events
            WHERE usage_events.status = 'pending' AND usage_events.enqueued_at < now() - make_interval(0, 0, 0, 0, 0, 0, 3)
            ORDER BY usage_events.enqueued_at LIMIT 1000 FOR UPDATE SKIP LOCKED)
          AND usage_events.status = 'pending'
        RETURNING usage_events.tenant_id, usage_events.id""",
    # 5. the refund path's join on the grant's id alone
    "tenant-join": """
        SELECT g.id, d.amount FROM grant_draws d JOIN credit_grants g ON g.id = d.grant_id
        WHERE d.tenant_id = 't-1' AND g.tenant_id = 't-2'""",
    # 6. the rollup's header step against a temporary table
    "tenant-filter": """
        SELECT c.tenant_id, f.balance_before FROM rollup_chains c JOIN ledger_entries f ON f.seq = c.first_seq""",
    # 7. now() in ON CONFLICT DO UPDATE SET
    "mutable-in-upsert": """
        INSERT INTO budgets (tenant_id, feature_key, monthly_limit, updated_at) VALUES ('t-1', 'x', 10, now())
        ON CONFLICT (tenant_id, feature_key) DO UPDATE SET monthly_limit = excluded.monthly_limit, updated_at = now()""",
    # 8. a subquery in INSERT … VALUES
    "subquery-in-values": """
        INSERT INTO alert_states (tenant_id, armed, last_seq) VALUES ('t-1', true,
            (SELECT coalesce(max(seq), 0) FROM ledger_entries WHERE tenant_id = 't-1'))""",
}

ACCEPTED = [
    # the fixes of the above
    """UPDATE usage_events AS e SET status = rows.status,
            charged_at = CASE WHEN rows.status = 'charged' THEN '2026-12-03T00:00:00+00'::timestamptz END
        FROM unnest(ARRAY['a']::uuid[], ARRAY['charged']) AS rows (id, status)
        WHERE e.tenant_id = 't-1' AND e.id = rows.id""",
    """SELECT w.current_balance FROM wallets w LEFT JOIN budgets b ON b.tenant_id = w.tenant_id
        AND b.feature_key = 'x' WHERE w.tenant_id = 't-1'""",
    """SELECT DISTINCT tenant_id FROM usage_events /* citus:operator-scan pending-candidates */
        WHERE status = 'pending' LIMIT 100""",
    """UPDATE usage_events SET enqueued_at = now() WHERE tenant_id = 't-1' AND id IN (
        SELECT id FROM usage_events WHERE tenant_id = 't-1' AND status = 'pending' FOR UPDATE SKIP LOCKED)""",
    """SELECT g.id, d.amount FROM grant_draws d JOIN credit_grants g ON g.tenant_id = d.tenant_id
        AND g.id = d.grant_id WHERE d.tenant_id = $1""",
    """SELECT c.first_seq, f.balance_before FROM rollup_chains c JOIN ledger_entries f
        ON f.tenant_id = 't-1' AND f.seq = c.first_seq""",
    """INSERT INTO budgets (tenant_id, feature_key, monthly_limit, updated_at) VALUES ('t-1', 'x', 10, now())
        ON CONFLICT (tenant_id, feature_key) DO UPDATE SET updated_at = excluded.updated_at""",
    """INSERT INTO alert_states (tenant_id, armed, last_seq)
        SELECT 't-1', true, coalesce(max(seq), 0) FROM ledger_entries WHERE tenant_id = 't-1'""",
    # correlation through a subquery, and a derived table carrying tenant_id
    """SELECT w.id FROM wallets w WHERE w.tenant_id = 't' AND EXISTS (
        SELECT 1 FROM ledger_entries l WHERE l.tenant_id = w.tenant_id AND l.wallet_id = w.id)""",
    """WITH e AS (SELECT tenant_id, id FROM usage_events WHERE tenant_id = 't')
       SELECT i.* FROM e JOIN usage_event_items i ON i.tenant_id = e.tenant_id AND i.usage_event_id = e.id""",
    # operator and reference tables are not tenant tables
    "SELECT id FROM stripe_events WHERE processed_at IS NULL FOR UPDATE SKIP LOCKED",
    "SELECT revision FROM catalog_revision",
]


@pytest.mark.parametrize("rule", sorted(REJECTED))
def test_each_failure_a_citus_run_found_is_rejected_with_its_rule(rule):
    assert rule in {v.rule for v in check_statement(REJECTED[rule])}


def test_the_catalog_revision_trigger_is_rejected_and_the_append_only_one_is_not():
    found = trigger_violations([CATALOG_TRIGGER, APPEND_ONLY_TRIGGER])
    assert [(v.rule, "catalog_revision" in v.detail) for v in found] == [("trigger-touches-other-table", True)]


@pytest.mark.parametrize("sql", ACCEPTED)
def test_citus_safe_statements_pass(sql):
    assert check_statement(sql) == []


def test_an_operator_scan_must_be_named_and_must_not_lock():
    unnamed = "SELECT DISTINCT tenant_id FROM usage_events WHERE status = 'pending'"
    assert [v.rule for v in check_statement(unnamed)] == ["tenant-filter"]
    assert "tenant-filter" in {v.rule for v in check_statement(unnamed + " /* citus:operator-scan nobody */")}
    locking = "SELECT id FROM usage_events /* citus:operator-scan pending-candidates */ FOR UPDATE SKIP LOCKED"
    assert [v.rule for v in check_statement(locking)] == ["cross-tenant-lock"]


def test_the_log_reader_skips_migrations_the_tests_own_sql_and_utility_statements():
    log = LogStatements()
    for record in [
        {"message": "statement: SELECT * FROM wallets", "application_name": "lad-migrations"},
        {"message": "statement: /* lad-test */ SELECT * FROM wallets", "application_name": ""},
        {"message": "statement: BEGIN"},
        {"message": "statement: CREATE TABLE x (a int)"},
        {"message": "connection authorized: user=postgres"},
        {"message": "statement: SELECT * FROM wallets WHERE tenant_id = 'a'"},
        {"message": "statement: SELECT * FROM wallets WHERE tenant_id = 'b'"},
        {"message": "statement: SELECT * FROM ledger_entries"},
    ]:
        log.add(record)
    assert len(log.statements) == 3
    assert [v.rule for v in check_log(log.statements)] == ["tenant-filter"]
