"""End-to-end tests: the whole service over HTTP (PostgreSQL, Redis, localstripe, a Celery worker and
gunicorn), started once for this folder. No beat: a test that needs a periodic job (the pending sweep,
the expiry job, a scan) runs it itself, so no job sweeps rows under a test that did not ask for it."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clock import TestClock
from tests.support.stack import TestStack, whole_stack
from tests.support.stack_fixtures import api, engine, stripe_client  # noqa: F401 - shared fixtures


@pytest.fixture(scope="package")
def live(smtp_inbox) -> Iterator[TestStack]:
    with whole_stack("test", smtp_inbox.url, beat=False, own_servers=False) as stack:
        yield stack




@pytest.fixture
def clock(engine) -> Iterator[TestClock]:  # noqa: F811 - the shared fixture, by name
    """The stack's clock (every process reads the database's), moved by the test; back to the real time
    afterwards."""
    moved = TestClock(engine)
    try:
        yield moved
    finally:
        moved.reset()
