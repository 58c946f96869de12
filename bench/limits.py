"""The machine's limits for `make bench`, measured in the same run on the same servers as LAD's figures:

- `sql_hot_wallet`: the rows LAD writes per hot-wallet charge, written by plain SQL through pgbench
  (the one shipped with the embedded PostgreSQL, so client and server match) in batches of 1,000, into
  LAD's own tables with all their indexes, constraints and triggers: per batch one transaction that
  claims 1,000 idempotency keys and inserts the pending events and their items (what `POST /charges`
  commits), and one that locks the wallet and its grant, marks the events charged, appends their debits
  as an unbroken balance chain with one grant draw each, and updates the grant and the wallet (what a
  worker's group commit does). Two pgbench clients, as the hot-wallet scenario has two posting clients;
  their settlements queue on the wallet lock exactly as LAD's do. No pricing, no JSON, no Python.
- `healthz` / `wallet_read`: wrk on `GET /healthz` (the serving stack with no work behind it) and on
  `GET /api/billing/wallet`, with the connections and threads of the single-charge scenario.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from devstack.servers import _pg_bin

BATCH = 1000
CLIENTS = 2

_ACCEPT = """
BEGIN;
WITH batch AS (
    SELECT gen_random_uuid() AS id, gen_random_uuid() AS task_id, 'sql-' || gen_random_uuid() AS key, n
    FROM generate_series(1, {batch}) AS n
), claimed AS (
    INSERT INTO idempotency_records (tenant_id, idempotency_key, operation, request_fingerprint, usage_event_id,
                                     created_at)
    SELECT '{tenant}', key, 'charge', md5(key), id, now() FROM batch ORDER BY key
    ON CONFLICT DO NOTHING
    RETURNING idempotency_key, usage_event_id
), events AS (
    INSERT INTO usage_events (id, tenant_id, task_id, feature_key, idempotency_key, user_id, status, total_cost,
                              currency, metadata, created_at, enqueued_at, enqueue_count)
    SELECT b.id, '{tenant}', b.task_id, 'sql', b.key, 'bench', 'pending', 0.01, 'USD', '{{}}'::jsonb, now(), now(), 1
    FROM batch b JOIN claimed c ON c.usage_event_id = b.id ORDER BY b.n
)
INSERT INTO usage_event_items (id, tenant_id, usage_event_id, position, category, provider, model, unit,
                               quantity, unit_price, cost)
SELECT gen_random_uuid(), '{tenant}', c.usage_event_id, 0, 'stt', 'openai', 'whisper-1', 'second', 100, 0.0001, 0.01
FROM claimed c;
COMMIT;
"""

_SETTLE = """
BEGIN;
SELECT current_balance FROM wallets WHERE tenant_id = '{tenant}' AND id = '{wallet}' FOR UPDATE;
SELECT remaining FROM credit_grants WHERE tenant_id = '{tenant}' AND wallet_id = '{wallet}' AND remaining <> 0
FOR UPDATE;
WITH claimed AS (
    SELECT id, seq, total_cost FROM usage_events
    WHERE tenant_id = '{tenant}' AND status = 'pending' ORDER BY seq LIMIT {batch} FOR UPDATE SKIP LOCKED
), charged AS (
    UPDATE usage_events e SET status = 'charged', charged_at = now()
    FROM claimed c WHERE e.tenant_id = '{tenant}' AND e.id = c.id
    RETURNING e.id
), chain AS (
    SELECT c.id AS event_id, c.seq, c.total_cost, gen_random_uuid() AS entry_id,
           w.current_balance + c.total_cost
             - sum(c.total_cost) OVER (ORDER BY c.seq ROWS UNBOUNDED PRECEDING) AS balance_before
    FROM claimed c CROSS JOIN (SELECT current_balance FROM wallets
                               WHERE tenant_id = '{tenant}' AND id = '{wallet}') AS w
), entries AS (
    INSERT INTO ledger_entries (id, tenant_id, wallet_id, entry_type, amount, balance_before, balance_after,
                                usage_event_id, description, created_by, created_at, reserved_change)
    SELECT entry_id, '{tenant}', '{wallet}', 'debit', -total_cost, balance_before, balance_before - total_cost,
           event_id, 'sql usage', 'bench', now(), 0
    FROM chain ORDER BY seq
    RETURNING id, amount
), draws AS (
    INSERT INTO grant_draws (tenant_id, ledger_entry_id, grant_id, amount)
    SELECT '{tenant}', id, '{grant}', amount FROM entries
), total AS (
    SELECT coalesce(sum(total_cost), 0) AS cost FROM claimed
), drawn AS (
    UPDATE credit_grants SET remaining = remaining - (SELECT cost FROM total), updated_at = now()
    WHERE tenant_id = '{tenant}' AND id = '{grant}'
)
UPDATE wallets SET current_balance = current_balance - (SELECT cost FROM total), updated_at = now()
WHERE tenant_id = '{tenant}' AND id = '{wallet}';
COMMIT;
"""


def pgbench() -> str | None:
    """The pgbench of the embedded server's install, else one on PATH."""
    shipped = Path(_pg_bin("pgbench"))
    return str(shipped) if shipped.exists() else shutil.which("pgbench")


def _fund(engine: Any, tenant: str, wallet: uuid.UUID, grant: uuid.UUID) -> None:
    with engine.begin() as connection:
        connection.execute(text("""
            INSERT INTO wallets (id, tenant_id, currency, current_balance, reserved_balance, overdraft_limit, status,
                                 created_at, updated_at)
            VALUES (:wallet, :tenant, 'USD', 1000000000, 0, 0, 'active', now(), now())"""),
                           {"wallet": wallet, "tenant": tenant})
        connection.execute(text("""
            INSERT INTO credit_grants (id, tenant_id, wallet_id, kind, amount, remaining, priority, source, reference,
                                       created_at, updated_at)
            VALUES (:grant, :tenant, :wallet, 'paid', 1000000000, 1000000000, 50, 'topup', 'sql-limit', now(), now())"""),
                           {"grant": grant, "tenant": tenant, "wallet": wallet})


def sql_hot_wallet(engine: Any, database_url: str, charges: int, scripts_dir: Path) -> dict[str, Any]:
    """Charges per second that plain SQL writes into one wallet: `charges` rounded to whole batches."""
    binary = pgbench()
    if binary is None:
        return {"skipped": "no pgbench"}
    tenant, wallet, grant = f"sql-limit-{uuid.uuid4().hex[:8]}", uuid.uuid4(), uuid.uuid4()
    _fund(engine, tenant, wallet, grant)
    script = scripts_dir / "sql_hot_wallet.sql"
    names = {"tenant": tenant, "wallet": wallet, "grant": grant, "batch": BATCH}
    script.write_text(_ACCEPT.format(**names) + _SETTLE.format(**names))
    batches = max(CLIENTS, charges // BATCH)
    url = make_url(database_url)
    command = [binary, "-n", "-f", str(script), "-c", str(CLIENTS), "-j", str(CLIENTS),
               "-t", str(batches // CLIENTS), "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432),
               "-U", url.username or "postgres", url.database or "postgres"]
    env = {"PGPASSWORD": url.password or "", "PGOPTIONS": "-c timezone=UTC", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    (scripts_dir / "pgbench.txt").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        raise RuntimeError(f"pgbench failed: {run.stderr[-2000:]}")
    tps = float(re.search(r"tps = ([0-9.]+)", run.stdout).group(1))  # type: ignore[union-attr]
    latency = re.search(r"latency average = ([0-9.]+) ms", run.stdout)
    with engine.connect() as connection:
        written = connection.execute(text(
            "SELECT count(*) FROM ledger_entries WHERE tenant_id = :t AND entry_type = 'debit'"), {"t": tenant}
        ).scalar_one()
        balanced = connection.execute(text("""
            SELECT w.current_balance = 1000000000 + coalesce(sum(l.amount), 0)
            FROM wallets w LEFT JOIN ledger_entries l ON l.tenant_id = w.tenant_id AND l.wallet_id = w.id
            WHERE w.tenant_id = :t AND w.id = :w GROUP BY w.current_balance"""), {"t": tenant, "w": wallet}
        ).scalar_one()
    assert written == (batches // CLIENTS) * CLIENTS * BATCH and balanced, (written, balanced)
    return {"per_s": round(tps * BATCH, 1), "charges": written, "batch": BATCH, "clients": CLIENTS,
            "batch_latency_ms": float(latency.group(1)) if latency else None}
