"""Fixtures every level shares; none of them starts a server the test did not ask for.

The levels (each folder's conftest.py has its own servers):
- tests/unit: no servers at all;
- tests/integration: a PostgreSQL database of its own, migrated with Alembic; no Redis, worker or web;
- tests/e2e: the whole service over HTTP, without beat (a test that needs a periodic job runs it);
- tests/faults: a whole service of its own, whose servers and worker the tests stop and kill.
Shared code lives in tests/support; no test module imports another.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest

from tests.support.stack import TEST_SECRET

# The statement check (tests/support/citus_rules.py): the embedded PostgreSQL servers of this run log every
# statement; when the session ends, what billing_core, web and tasks sent is checked against Citus's rules
# and a violation fails the run. LAD_CITUS_CHECK=0 turns it off (e.g. against an external DATABASE_URL).
os.environ.setdefault("LAD_PG_STATEMENT_LOG", os.environ.get("LAD_CITUS_CHECK", "1"))


def pytest_configure(config):
    if os.environ.get("LAD_PG_STATEMENT_LOG") == "1":
        from tests.support import statement_check

        statement_check.start(config)


@pytest.fixture(scope="session")
def smtp_inbox():
    """A real SMTP server (aiosmtpd) the stacks send e-mail to (SMTP_URL); see tests.support.receivers.SmtpInbox."""
    from tests.support.receivers import SmtpInbox

    inbox = SmtpInbox().start()
    try:
        yield inbox
    finally:
        inbox.stop()


@pytest.fixture(scope="session")
def sink():
    """A webhook receiver answering 200 to everything, for tests about when alerts fire."""
    from tests.support.receivers import WebhookReceiver

    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


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
