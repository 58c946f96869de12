"""Fault tests: a whole service of their own (embedded PostgreSQL and Redis under .data/test-faults/,
whatever DATABASE_URL / REDIS_URL say, localstripe, worker, beat, gunicorn), which the tests stop,
kill and restart. Nothing another test uses is touched. Beat runs here as in production: recovering
from a fault (charges accepted while the broker was down) is its pending sweep's job."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stack import TestStack, whole_stack
from tests.support.stack_fixtures import api, engine, stripe_client  # noqa: F401 - shared fixtures


@pytest.fixture(scope="package")
def live(smtp_inbox) -> Iterator[TestStack]:
    with whole_stack("test-faults", smtp_inbox.url, beat=True, own_servers=True) as stack:
        yield stack
