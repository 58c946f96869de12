"""The test stack: real PostgreSQL, Redis, Celery worker and beat, and gunicorn serving the app.

With DATABASE_URL / REDIS_URL unset, embedded servers start under .data/test/; with them set,
those servers are used. Either way the suite creates its own database and queue names and
drops the database at the end, so it never touches a developer's data.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.servers import free_port
from devstack.stack import ROOT, Stack, drop_database
from tests.helpers import Api

TEST_SECRET = "test-secret-" + uuid.uuid4().hex
STRIPE_SECRET = "whsec_test_" + uuid.uuid4().hex
STRIPE_API_KEY = "sk_test_" + uuid.uuid4().hex  # localstripe accepts any sk_ key


class TestStack:
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
        import signal

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
        from devstack.servers import _wait_for_port
        from devstack.stack import PYTHON_BIN

        process = self.stack.spawn("localstripe", str(PYTHON_BIN / "python"), "-m", "devstack.localstripe",
                                   "--port", str(self.stripe_port), "--state", str(self.logs / "localstripe.pickle"),
                                   log=self.stripe_log)
        _wait_for_port(self.stripe_port, process, self.stripe_log)

    def stop_localstripe(self) -> None:
        self.stack.stop_process("localstripe")


@pytest.fixture(scope="session")
def smtp_inbox():
    """A real SMTP server (aiosmtpd) the stack sends e-mail to (SMTP_URL); see tests.receivers.SmtpInbox."""
    from tests.receivers import SmtpInbox

    inbox = SmtpInbox().start()
    try:
        yield inbox
    finally:
        inbox.stop()


@pytest.fixture(scope="session")
def live(smtp_inbox) -> Iterator[TestStack]:
    run_id = uuid.uuid4().hex[:10]
    data_dir = ROOT / ".data" / "test"
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
        SMTP_URL=smtp_inbox.url,
        SMTP_FROM="billing@lad.test",
        # the SSRF guard is on everywhere; the tests' webhook receivers listen on 127.0.0.1
        WEBHOOK_ALLOW_PRIVATE_ADDRESSES="true",
        METRICS_TOKEN="metrics-" + uuid.uuid4().hex,
        # short enough for a test to see a trickling client cut off (the default is 30 s)
        WEB_HEADER_TIMEOUT_SECONDS="5",
        STRIPE_SECRET_KEY=STRIPE_API_KEY,
        STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}",
        AUTO_TOPUP_RETRY_BASE_SECONDS="1",
    )
    port = free_port()
    stack.env["LAD_PUBLIC_URL"] = f"http://127.0.0.1:{port}"  # links and redirects name it, never a Host
    test_stack = TestStack(stack, port, logs)
    try:
        test_stack.start_localstripe()
        stack.start_servers()
        stack.migrate()
        stack.start_worker(log=logs / "worker.log", concurrency=4)
        stack.start_beat(log=logs / "beat.log")
        stack.start_web(port, log=logs / "web.log", workers=2, threads=32)
        stack.wait_ready(port)
        os.environ.update({k: stack.env[k] for k in (
            "DATABASE_URL", "REDIS_URL", "BILLING_QUEUE", "STRIPE_API_BASE", "STRIPE_SECRET_KEY",
            "AUTO_TOPUP_RETRY_BASE_SECONDS",
            # tests deliver in-process to their local receivers too
            "WEBHOOK_ALLOW_PRIVATE_ADDRESSES")})
        yield test_stack
    finally:
        for name in list(stack.processes):
            stack.stop_process(name)
        if stack.server_url:
            from billing_core.db import dispose_engines

            dispose_engines()
            drop_database(stack.server_url, stack.database_name)
        if stack.servers is not None:
            stack.servers.stop()


@pytest.fixture(scope="session")
def api(live: TestStack) -> Api:
    return live.api


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test: tests never see each other's wallets."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def make_token() -> Callable[..., str]:
    from web.auth import TokenSettings, issue_token

    settings = TokenSettings(TEST_SECRET, None, None, None)

    def make(tenant_id: str, *capabilities: str, ttl: int = 3600, sub: str = "test") -> str:
        return issue_token(settings, tenant_id=tenant_id, capabilities=list(capabilities), subject=sub,
                           ttl_seconds=ttl)

    return make


@pytest.fixture
def tokens(tenant: str, make_token: Callable[..., str]) -> dict[str, str]:
    return {
        "any": make_token(tenant),
        "charge": make_token(tenant, "billing.charge", "billing.view"),
        "view": make_token(tenant, "billing.view"),
        "admin": make_token(tenant, "billing.admin"),
    }


@pytest.fixture
def engine(live: TestStack):
    from billing_core.db import engine_for

    return engine_for(live.env["DATABASE_URL"])
