"""A real streaming replica of the suite's embedded PostgreSQL (`pg_basebackup -R` with pgserver's own
binaries): READ_DATABASE_URL sends the heavy reads there while writes and read-your-own-writes stay on
the primary; promoted (`pg_ctl promote`) and named by DATABASE_URL, it carries the ledger on."""
from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from devstack.servers import _as_pg_user, _pg_bin, _wait_for_port, free_port
from devstack.stack import Stack, database_url
from tests.support.helpers import Api, assert_ledger_consistent, stt_items, top_up, wallet
from tests.support.polling import eventually

pytestmark = pytest.mark.faults


def query(url: str, statement: str, database: str = "postgres"):
    u = make_url(url)
    connection = psycopg2.connect(host=u.host, port=u.port, user=u.username, dbname=database)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchone()[0] if cursor.description else None
    finally:
        connection.close()


class Replica:
    def __init__(self, primary_url: str, root: Path):
        self.primary_url, self.root = primary_url, root
        self.data = root / "data"
        self.port = free_port()
        self.url = make_url(primary_url).set(port=self.port).render_as_string(hide_password=False)
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True)
        run_as = _as_pg_user(self.root)
        primary = make_url(self.primary_url)
        subprocess.run([_pg_bin("pg_basebackup"), "-h", primary.host, "-p", str(primary.port), "-U", "postgres",
                        "-D", str(self.data), "-R", "-X", "stream", "-c", "fast"],
                       check=True, capture_output=True, **run_as)
        log = self.root / "replica.log"
        self.process = subprocess.Popen(
            [_pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1", "-k", str(self.data),
             "-c", "hot_standby=on", "-c", "max_connections=300"],  # at least the primary's
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, **run_as)
        _wait_for_port(self.port, self.process, log)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert query(self.url, "SELECT pg_is_in_recovery()") is True
                return
            except psycopg2.OperationalError:
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.2)

    def catch_up(self, timeout: float = 30) -> None:
        lsn = query(self.primary_url, "SELECT pg_current_wal_lsn()")
        eventually(lambda: query(self.url, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"), timeout, 0.1,
                   what="the replica caught up")

    def promote(self) -> None:
        subprocess.run([_pg_bin("pg_ctl"), "promote", "-D", str(self.data), "-w"], check=True, capture_output=True,
                       **_as_pg_user(self.root))
        assert query(self.url, "SELECT pg_is_in_recovery()") is False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            subprocess.run([_pg_bin("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"],
                           capture_output=True, **_as_pg_user(self.root))
            self.process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def web(live, port: int, **env: str) -> Iterator[Api]:
    """One more web process of the suite's service (same database, broker and worker), with `env`."""
    stack = Stack(live.stack.data_dir, database_name=live.stack.database_name, persistent=False)
    stack.env.update(live.env, **env)
    try:
        stack.start_web(port, log=live.logs / f"web-{port}.log", workers=1, threads=8)
        stack.wait_ready(port)
        yield Api(f"http://127.0.0.1:{port}")
    finally:
        stack.stop_process("web")


def test_reads_go_to_the_replica_and_the_promoted_replica_carries_the_ledger(live, tokens, tenant, make_token):
    servers = live.stack.servers
    if servers is None or "postgres" not in servers.processes:
        pytest.skip("DATABASE_URL points at a server this suite does not own")
    database = live.stack.database_name
    replica = Replica(live.stack.server_url, servers.root / f"replica-{uuid.uuid4().hex[:8]}")
    try:
        top_up(live.api, tokens["admin"], "10")
        replica.start()
        replica_db = database_url(replica.url, database)
        with web(live, free_port(), READ_DATABASE_URL=replica_db) as api:
            first = api.post("/api/billing/charge", tokens["charge"],
                             json={"featureKey": "f", "idempotencyKey": "first", "items": stt_items("100")})
            assert first.status_code == 200, first.text
            replica.catch_up()
            query(replica.url, "SELECT pg_wal_replay_pause()")
            # the replica now stands still: what it serves and what the primary serves differ
            second = api.post("/api/billing/charge", tokens["charge"],
                              json={"featureKey": "f", "idempotencyKey": "second", "items": stt_items("100")})
            assert second.status_code == 200, second.text
            second_debit = second.json()["transaction"]["id"]
            assert second.json()["usageEvent"]["status"] == "charged"          # the charge's outcome: primary
            assert wallet(api, tokens["any"])["currentBalance"] == "9.98"      # the wallet it changed: primary
            event = api.get(f"/api/billing/usage/{second.json()['usageEvent']['id']}", tokens["view"])
            assert event.status_code == 200 and event.json()["usageEvent"]["status"] == "charged"

            def listed() -> tuple[set[str], int]:
                transactions = api.get("/api/billing/transactions", tokens["view"]).json()["transactions"]
                usage = api.get("/api/billing/usage", tokens["view"]).json()["usage"]["events"]
                return {t["id"] for t in transactions}, len(usage)

            ids, events = listed()
            assert second_debit not in ids and events == 1  # history and transactions: the replica
            query(replica.url, "SELECT pg_wal_replay_resume()")
            replica.catch_up()
            ids, events = listed()
            assert second_debit in ids and events == 2

        # the way past the primary: promote the replica and name it in DATABASE_URL
        replica.catch_up()
        replica.promote()
        with web(live, free_port(), DATABASE_URL=replica_db) as api:
            assert_ledger_consistent(api, make_token, tenant)
            top_up(api, tokens["admin"], "1")  # it takes writes now
            assert wallet(api, tokens["any"])["currentBalance"] == "10.98"
            assert_ledger_consistent(api, make_token, tenant)
    finally:
        replica.stop()
