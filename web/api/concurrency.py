"""How a tenant's call slots are shown: in hold answers, GET /entitlement and GET /wallet (`calls`)."""
from __future__ import annotations

from billing_core.calls.admission import Concurrency
from web.api.answers import Answer


class ConcurrencyOut(Answer):
    """The tenant's call slots: `limit` is the plan's base limit, `remaining` counts burst slots too;
    both null when there is no limit. `active` counts running calls (active holds)."""
    limit: int | None
    burstLimit: int | None
    active: int
    remaining: int | None


def concurrency_out(c: Concurrency) -> ConcurrencyOut:
    return ConcurrencyOut(limit=c.limit, burstLimit=c.burst_limit, active=c.active, remaining=c.remaining)
