"""Fault tests: a whole service of their own (embedded PostgreSQL and Redis under .data/test-faults/,
whatever DATABASE_URL / REDIS_URL say, localstripe, worker, beat, gunicorn), which the tests stop,
kill and restart. Nothing another test uses is touched. Beat runs here as in production: recovering
from a fault (charges accepted while the broker was down) is its pending sweep's job."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.helpers import Api
from tests.support.stack import TestStack, whole_stack


@pytest.fixture(scope="package")
def live(smtp_inbox) -> Iterator[TestStack]:
    with whole_stack("test-faults", smtp_inbox.url, beat=True, own_servers=True) as stack:
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
