"""Crashes under load: the broker (Redis SIGKILL, RabbitMQ connections cut) or PostgreSQL (immediate
stop) vanishes for a few seconds while eight clients send `POST /charge` with `Prefer: respond-async`.
Every acknowledged charge settles exactly once, the worker process that was running is still the one
running, and the API answers 503 (never 500) for what it cannot do meanwhile."""
from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select

from billing_core.db import engine_for
from billing_core.ledger.tables import ledger_entries
from billing_core.usage.tables import usage_events
from devstack.servers import free_port
from devstack.stack import Stack, drop_database
from tests.support.helpers import Api, assert_ledger_consistent, stt_items, top_up
from tests.support.polling import eventually
from tests.support.stack import TEST_SECRET

pytestmark = pytest.mark.faults

SENDERS = 8


class Load:
    """Eight threads sending single async charges until stopped; what each answer was."""

    def __init__(self, base_url: str, token: str):
        self.base_url, self.token = base_url, token
        self.accepted: set[str] = set()   # usage event ids answered 200/202: the service owns them now
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, daemon=True) for _ in range(SENDERS)]

    def _send(self) -> None:
        api = Api(self.base_url)
        while not self._stop.is_set():
            body = {"featureKey": "f", "idempotencyKey": str(uuid.uuid4()), "items": stt_items("100")}
            try:
                response = api.post("/api/billing/charge", self.token, json=body,
                                    headers={"Prefer": "respond-async"})
            except OSError as exc:  # the API itself never goes away in these tests
                with self._lock:
                    self.errors.append(repr(exc))
                continue
            with self._lock:
                self.statuses[response.status_code] += 1
                if response.status_code in (200, 202):
                    self.accepted.add(response.json()["usageEvent"]["id"])
                elif response.status_code >= 500 and response.status_code != 503:
                    self.errors.append(f"{response.status_code} {response.text[:300]}")
            if response.status_code == 503:
                time.sleep(0.05)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)


def settled_counts(engine, tenant: str) -> dict[str, int]:
    with engine.connect() as connection:
        return dict(connection.execute(
            select(usage_events.c.status, func.count()).where(usage_events.c.tenant_id == tenant)
            .group_by(usage_events.c.status)).all())


def wait_for_charges(engine, tenant: str, at_least: int, timeout: float = 60) -> None:
    eventually(lambda: settled_counts(engine, tenant), timeout, 0.1, what=f"{at_least} charges settled",
               until=lambda counts: counts.get("charged", 0) >= at_least)


def assert_each_settled_once(engine, tenant: str, accepted: set[str], timeout: float = 150) -> None:
    eventually(lambda: settled_counts(engine, tenant), timeout, 0.5, what="no charge pending",
               until=lambda counts: "pending" not in counts)
    with engine.connect() as connection:
        events = dict(connection.execute(select(usage_events.c.id, usage_events.c.status)
                                         .where(usage_events.c.tenant_id == tenant)).all())
        debits = Counter(str(e) for e in connection.execute(
            select(ledger_entries.c.usage_event_id).where(ledger_entries.c.tenant_id == tenant,
                                                          ledger_entries.c.entry_type == "debit")).scalars())
    assert accepted <= {str(e) for e in events}, "an acknowledged charge was lost"
    assert set(events.values()) == {"charged"}
    assert all(debits[str(e)] == 1 for e in events), "a charge was debited twice or not at all"
    assert sum(debits.values()) == len(events)


def crash_under_load(api: Api, token: str, engine, tenant: str, crash: Callable[[], None],
                     restore: Callable[[], None], outage_seconds: float = 4) -> Load:
    """Charges flowing (and being acknowledged), then the crash, the outage, the return; load on
    throughout and a little after."""
    with Load(api.base_url, token) as load:
        wait_for_charges(engine, tenant, 40)  # the worker is settling and acknowledging charges
        crash()
        try:
            time.sleep(outage_seconds)
        finally:
            restore()
        time.sleep(2)
    assert load.errors == [], load.errors[:5]
    return load


def worker_pid(stack: Stack) -> int:
    worker = stack.processes["worker"]
    assert worker.poll() is None, "the worker exited"
    return worker.pid


# --- Redis, the default broker ------------------------------------------------------------------------

def test_redis_sigkill_while_charges_are_acknowledged(live, tokens, tenant, engine, make_token):
    if not live.embedded_redis:
        pytest.skip("REDIS_URL points at a server this suite must not kill")
    servers = live.stack.servers
    top_up(live.api, tokens["admin"], "1000")
    pid = worker_pid(live.stack)
    load = crash_under_load(live.api, tokens["charge"], engine, tenant, servers.kill_redis, servers.start_redis)
    assert_each_settled_once(engine, tenant, load.accepted)
    assert worker_pid(live.stack) == pid, "the worker process was replaced"
    assert live.stack.processes["beat"].poll() is None, "beat exited"
    assert_ledger_consistent(live.api, make_token, tenant)


# --- RabbitMQ (the machine's server), its connections cut by a proxy we own -----------------------------

RABBIT = ("127.0.0.1", 5672)


def rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(RABBIT, timeout=1) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(1)[:1] == b"\x01"  # connection.start
    except OSError:
        return False


class CuttableProxy:
    """A TCP proxy to RabbitMQ: `cut()` drops every connection and refuses new ones, as a broker crash
    looks to its clients, without touching the machine's server; `mend()` listens again."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.port = target, free_port()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def mend(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@contextmanager
def rabbitmq_stack(live, tmp_path: Path, proxy: CuttableProxy) -> Iterator[tuple[Stack, Api]]:
    """Web, worker and beat of their own, on the shared PostgreSQL, with RabbitMQ (via `proxy`) as broker."""
    run_id = uuid.uuid4().hex[:8]
    stack = Stack(live.stack.data_dir, database_name=f"lad_billing_amqp_{run_id}", persistent=False)
    stack.env.update({k: live.env[k] for k in live.env if k not in ("DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")})
    stack.env.update(JWT_SECRET=TEST_SECRET, BILLING_QUEUE=f"billing-amqp-{run_id}",
                     CELERY_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{proxy.port}//",
                     PENDING_CHARGE_AGE_SECONDS="3", PENDING_SWEEP_INTERVAL_SECONDS="1", LAD_ENV="development")
    port = free_port()
    try:
        # the suite's DATABASE_URL and REDIS_URL are in os.environ: the same servers, another database
        stack.start_servers()
        stack.migrate()
        stack.start_worker(log=tmp_path / "worker.log", concurrency=2)
        stack.start_beat(log=tmp_path / "beat.log")
        stack.start_web(port, log=tmp_path / "web.log", workers=1, threads=16)
        stack.wait_ready(port)
        yield stack, Api(f"http://127.0.0.1:{port}")
    finally:
        for name in list(stack.processes):
            stack.stop_process(name)
        from billing_core.db import dispose_engines

        dispose_engines()
        drop_database(stack.server_url, stack.database_name)


def test_rabbitmq_connections_cut_while_charges_are_acknowledged(live, tenant, make_token, tmp_path):
    if not rabbitmq_answers():
        pytest.skip("no RabbitMQ answers on 127.0.0.1:5672")
    proxy = CuttableProxy(RABBIT)
    proxy.mend()
    try:
        with rabbitmq_stack(live, tmp_path, proxy) as (stack, api):
            engine = engine_for(stack.env["DATABASE_URL"])
            top_up(api, make_token(tenant, "billing.admin"), "1000")
            pid = worker_pid(stack)
            load = crash_under_load(api, make_token(tenant, "billing.charge", "billing.view"), engine, tenant,
                                    proxy.cut, proxy.mend)
            assert_each_settled_once(engine, tenant, load.accepted)
            assert worker_pid(stack) == pid, "the worker process was replaced"
            assert stack.processes["beat"].poll() is None, "beat exited"
            assert_ledger_consistent(api, make_token, tenant)
    finally:
        proxy.cut()


# --- PostgreSQL --------------------------------------------------------------------------------------

def test_postgres_immediate_stop_under_async_charges(live, tokens, tenant, engine, make_token):
    servers = live.stack.servers
    if servers is None or "postgres" not in servers.processes:
        pytest.skip("DATABASE_URL points at a server this suite must not stop")
    top_up(live.api, tokens["admin"], "1000")
    load = crash_under_load(live.api, tokens["charge"], engine, tenant, servers.stop_postgres_immediately,
                            servers.start_postgres)
    assert load.statuses[503] > 0, load.statuses  # the outage was seen, and answered as one
    assert set(load.statuses) <= {200, 202, 503}, load.statuses
    assert_each_settled_once(engine, tenant, load.accepted)
    assert live.worker_alive()
    assert_ledger_consistent(live.api, make_token, tenant)
