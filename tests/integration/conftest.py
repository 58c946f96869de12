"""Integration tests: billing_core against a real PostgreSQL database of their own, migrated with
Alembic (the embedded server under .data/test/, or the server DATABASE_URL names). No Redis, no
worker, no beat, no web: each test calls billing_core in-process, as the web layer and the worker do."""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.clock import TestClock
from tests.support.stack import DATA, environment, postgres_server, test_database


@pytest.fixture(scope="package")
def database_url() -> Iterator[str]:
    with postgres_server(DATA / "test") as server, \
            test_database(server, f"lad_billing_it_{uuid.uuid4().hex[:10]}") as url, \
            environment(DATABASE_URL=url, WEBHOOK_ALLOW_PRIVATE_ADDRESSES="true"):  # local test receivers
        yield url


@pytest.fixture
def engine(database_url: str):
    from billing_core.db import engine_for

    return engine_for(database_url)


@pytest.fixture
def clock(engine) -> Iterator[TestClock]:
    """The database's clock, moved by the test; back to the real time afterwards."""
    moved = TestClock(engine)
    try:
        yield moved
    finally:
        moved.reset()
