"""Fixtures over a folder's `live` stack, shared by the e2e and the faults folders (each conftest defines
its own `live` and imports these)."""
from __future__ import annotations

import pytest

from tests.support.helpers import Api
from tests.support.stack import TestStack


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
