"""End-to-end tests: the whole service over HTTP (PostgreSQL, Redis, localstripe, a Celery worker and
gunicorn), started once for this folder. No beat: a test that needs a periodic job (the pending sweep,
the expiry job, a scan) runs it itself, so no job sweeps rows under a test that did not ask for it."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clock import TestClock
from tests.support.helpers import Api
from tests.support.stack import TestStack, whole_stack


@pytest.fixture(scope="package")
def live(smtp_inbox) -> Iterator[TestStack]:
    with whole_stack("test", smtp_inbox.url, beat=False, own_servers=False) as stack:
        yield stack


@pytest.fixture(scope="package")
def api(live: TestStack) -> Api:
    return live.api


@pytest.fixture(scope="package")
def stripe_client(live: TestStack):
    """Stripe (the stack's localstripe) through the official library."""
    from tests.support.auto_topup import stripe_client

    return stripe_client(live.env["STRIPE_API_BASE"])


@pytest.fixture
def engine(live: TestStack):
    from billing_core.db import engine_for

    return engine_for(live.env["DATABASE_URL"])


@pytest.fixture
def clock(engine) -> Iterator[TestClock]:
    """The stack's clock (every process reads the database's), moved by the test; back to the real time
    afterwards."""
    moved = TestClock(engine)
    try:
        yield moved
    finally:
        moved.reset()
