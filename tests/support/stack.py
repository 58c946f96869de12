"""The servers the tests run against, by level.

- `test_database`: a database of its own on a PostgreSQL server, with the test clock installed and
  migrated with Alembic, the default catalog loaded; the integration tests need nothing else.
- `whole_stack`: the service as it runs, PostgreSQL, Redis, localstripe, Celery worker and gunicorn
  (beat only if asked: the end-to-end tests run the periodic jobs they need themselves), with servers
  embedded under a data folder of its own or, for the end-to-end stack, the ones DATABASE_URL /
  REDIS_URL name. The fault tests get one of their own with `own_servers=True`, whose PostgreSQL,
  Redis and worker they may stop and kill.

Each creates its own database and queue names and drops the database at the end, so it never touches
a developer's data.
"""
from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
from sqlalchemy.engine import make_url

from devstack.servers import EmbeddedServers, _wait_for_port, free_port
from devstack.stack import PYTHON_BIN, ROOT, Stack, connect, create_database, database_url, drop_database
from tests.support import clock
from tests.support.helpers import Api
from tests.support.polling import eventually

TEST_SECRET = "test-secret-" + uuid.uuid4().hex
STRIPE_SECRET = "whsec_test_" + uuid.uuid4().hex
STRIPE_API_KEY = "sk_test_" + uuid.uuid4().hex  # localstripe accepts any sk_ key

DATA = ROOT / ".data"


def _connect_once_visible(url: str):
    """A connection to the database `url` names, once it can be had. With several hosts (the HA stack),
    libpq does not try the next host after a FATAL at startup, so a standby listed first that has not yet
    replayed the CREATE DATABASE answers "does not exist" for a moment: wait that out, nothing else."""
    def attempt():
        try:
            return connect(url)
        except psycopg2.OperationalError as exc:
            if "does not exist" in str(exc):
                return None
            raise
    return eventually(attempt, timeout=30, what="the new database on the host libpq picks")


def _install_clock(url: str) -> None:
    u = make_url(url)
    connection = _connect_once_visible(url)  # the URL may name several hosts (tests/faults/test_failover.py)
    connection.autocommit = True
    try:
        clock.install(connection, u.database)
    finally:
        connection.close()


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """os.environ with `values` (None: removed) for the duration, as it was afterwards; this process's
    settings (billing_core.bootstrap) are read again from it."""
    from billing_core import bootstrap

    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        bootstrap.settings.cache_clear()
        bootstrap.runtime.cache_clear()
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        bootstrap.settings.cache_clear()
        bootstrap.runtime.cache_clear()


# --- PostgreSQL only ---------------------------------------------------------------------------------

@contextmanager
def postgres_server(data_dir: Path) -> Iterator[str]:
    """The server DATABASE_URL names (its maintenance database), or an embedded one under data_dir."""
    from billing_core.bootstrap import normalize_database_url

    given = os.environ.get("DATABASE_URL")
    if given:
        yield normalize_database_url(given)
        return
    servers = EmbeddedServers(data_dir)
    servers.root.mkdir(parents=True, exist_ok=True)
    servers.start_postgres()
    try:
        yield servers.database_url
    finally:
        servers.stop()


@contextmanager
def test_database(server_url: str, name: str) -> Iterator[str]:
    """A fresh database on the server, clock installed, migrated and with the default catalog; dropped after."""
    from alembic import command
    from alembic.config import Config

    from billing_core import catalog
    from billing_core.db import UnitOfWork, dispose_engines, engine_for

    create_database(server_url, name, exist_ok=False)
    url = database_url(server_url, name)
    try:
        _install_clock(url)
        config = Config(str(ROOT / "alembic.ini"))
        config.set_main_option("script_location", str(ROOT / "migrations"))
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        command.upgrade(config, "head")
        with UnitOfWork(engine_for(url)) as uow:
            catalog.load_default_catalog(uow)  # commits
        yield url
    finally:
        dispose_engines()
        drop_database(server_url, name)


test_database.__test__ = False  # a context manager, not a test


# --- the whole service -----------------------------------------------------------------------------

class TestStack:
    __test__ = False

    def __init__(self, stack: Stack, port: int, logs: Path):
        self.stack, self.port, self.logs = stack, port, logs
        self.api = Api(f"http://127.0.0.1:{port}")

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env

    @property
    def embedded_redis(self) -> bool:
        return self.stack.servers is not None and "redis" in self.stack.servers.processes

    def start_worker(self) -> None:
        self.stack.start_worker(log=self.logs / "worker.log", concurrency=4)

    def kill_worker(self) -> None:
        self.stack.stop_process("worker", sig=signal.SIGKILL)

    def worker_alive(self) -> bool:
        worker = self.stack.processes.get("worker")
        return worker is not None and worker.poll() is None

    def stop_redis(self) -> None:
        assert self.stack.servers is not None
        self.stack.servers.stop_redis()

    def start_redis(self) -> None:
        assert self.stack.servers is not None
        self.stack.servers.start_redis()

    # localstripe: the Stripe API server auto top-up pays through (STRIPE_API_BASE); its state
    # survives a stop and start, like Stripe's during an outage on the way to it
    @property
    def stripe_port(self) -> int:
        return int(self.env["STRIPE_API_BASE"].rsplit(":", 1)[1])

    @property
    def stripe_log(self) -> Path:
        return self.logs / "localstripe.log"

    def start_localstripe(self) -> None:
        process = self.stack.spawn("localstripe", str(PYTHON_BIN / "python"), "-m", "devstack.localstripe",
                                   "--port", str(self.stripe_port), "--state", str(self.logs / "localstripe.pickle"),
                                   log=self.stripe_log)
        _wait_for_port(self.stripe_port, process, self.stripe_log)

    def stop_localstripe(self) -> None:
        self.stack.stop_process("localstripe")


# what in-process code of the tests reads from the environment (the tests deliver to their local
# webhook receivers in-process too)
IN_PROCESS_ENV = ("DATABASE_URL", "REDIS_URL", "BILLING_QUEUE", "STRIPE_API_BASE", "STRIPE_SECRET_KEY",
                  "AUTO_TOPUP_RETRY_BASE_SECONDS", "PENDING_CHARGE_AGE_SECONDS", "WEBHOOK_ALLOW_PRIVATE_ADDRESSES",
                  "EXPORT_URL")


@contextmanager
def whole_stack(name: str, smtp_url: str, *, beat: bool, own_servers: bool,
                servers: dict[str, str] | None = None) -> Iterator[TestStack]:
    """The service under `.data/<name>/`; see the module's docstring. `servers` (DATABASE_URL and REDIS_URL)
    names servers the caller started, e.g. the high-availability cluster of devstack.ha."""
    run_id = uuid.uuid4().hex[:10]
    data_dir = DATA / name
    logs = data_dir / "logs" / run_id
    logs.mkdir(parents=True, exist_ok=True)
    stack = Stack(data_dir, database_name=f"lad_billing_test_{run_id}", persistent=False)
    stack.env.update(
        JWT_SECRET=TEST_SECRET,
        BILLING_QUEUE=f"billing-test-{run_id}",
        PENDING_CHARGE_AGE_SECONDS="3",
        PENDING_SWEEP_INTERVAL_SECONDS="1",
        LAD_ENV="development",
        STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        # low enough that a test can reach it, above what the other tests send to a depleted tenant
        RATE_LIMIT_DEPLETED="250/minute",
        NOTIFICATION_RETRY_BASE_SECONDS="1",
        SMTP_URL=smtp_url,
        SMTP_FROM="billing@lad.test",
        # the SSRF guard is on everywhere; the tests' webhook receivers listen on 127.0.0.1
        WEBHOOK_ALLOW_PRIVATE_ADDRESSES="true",
        METRICS_TOKEN="metrics-" + uuid.uuid4().hex,
        # short enough for a test to see a trickling client cut off (the default is 30 s)
        WEB_HEADER_TIMEOUT_SECONDS="5",
        STRIPE_SECRET_KEY=STRIPE_API_KEY,
        STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}",
        AUTO_TOPUP_RETRY_BASE_SECONDS="1",
        EXPORT_URL=str(logs / "exports"),  # the run's own Parquet exports
    )
    port = free_port()
    stack.env["LAD_PUBLIC_URL"] = f"http://127.0.0.1:{port}"  # links and redirects name it, never a Host
    test_stack = TestStack(stack, port, logs)
    given: dict[str, str | None] = {"DATABASE_URL": None, "REDIS_URL": None} if own_servers else {}
    given.update(servers or {})
    try:
        test_stack.start_localstripe()
        with environment(**given):  # servers of its own: whatever DATABASE_URL / REDIS_URL say
            stack.start_servers()
        _install_clock(stack.env["DATABASE_URL"])
        stack.migrate()
        stack.start_worker(log=logs / "worker.log", concurrency=4)
        if beat:
            stack.start_beat(log=logs / "beat.log")
        stack.start_web(port, log=logs / "web.log", workers=2, threads=32)
        stack.wait_ready(port)
        with environment(**{k: stack.env[k] for k in IN_PROCESS_ENV}):
            yield test_stack
    finally:
        for process in list(stack.processes):
            stack.stop_process(process)
        if stack.server_url:
            from billing_core.db import dispose_engines

            dispose_engines()
            drop_database(stack.server_url, stack.database_name)
        if stack.servers is not None:
            stack.servers.stop()
