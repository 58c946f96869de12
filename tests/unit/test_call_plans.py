"""The call plan's arithmetic, without a database: the ceiling (burst slots included), the slots shown,
and what the plan's request accepts."""
from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from billing_core.calls.admission import concurrency
from billing_core.calls.commands import CallPlanRequest
from billing_core.calls.plans import CallPlan
from billing_core.ledger.model import owes


def test_the_ceiling_counts_burst_slots_and_no_limit_is_unlimited():
    assert CallPlan().ceiling is None
    assert CallPlan(max_concurrent_calls=10).ceiling == 10
    assert CallPlan(max_concurrent_calls=10, burst_limit=12).ceiling == 12
    assert CallPlan(max_concurrent_calls=0).ceiling == 0


def test_the_slots_shown():
    unlimited = concurrency(CallPlan(), 3)
    assert (unlimited.limit, unlimited.burst_limit, unlimited.active, unlimited.remaining) == (None, None, 3, None)
    burst = concurrency(CallPlan(max_concurrent_calls=10, burst_limit=12), 11)
    assert (burst.limit, burst.burst_limit, burst.active, burst.remaining) == (10, 12, 11, 1)
    assert concurrency(CallPlan(max_concurrent_calls=2), 5).remaining == 0  # a lowered limit: never negative


def test_grace_is_the_default_policy_and_strict_is_not():
    assert CallPlan().settles_in_full and not CallPlan(settlement_policy="strict").settles_in_full


def test_debt_is_below_zero_beyond_the_overdraft():
    assert not owes(Decimal(0), Decimal(0)) and owes(Decimal("-0.01"), Decimal(0))
    assert not owes(Decimal(-5), Decimal(5)) and owes(Decimal("-5.01"), Decimal(5))


@pytest.mark.parametrize("body", [
    {"maxConcurrentCalls": -1}, {"maxConcurrentCalls": "3"}, {"maxConcurrentCalls": 1.5},
    {"burstMultiplier": "0.99"}, {"burstMultiplier": "NaN"}, {"burstMultiplier": 101},
    {"callGraceLimit": "-1"}, {"settlementPolicy": "lenient"}, {"featureLimits": {"bad key!": 1}},
    {"featureLimits": {"voice": -1}}, {"surprise": True},
])
def test_the_plan_request_refuses_what_it_cannot_mean(body):
    with pytest.raises(ValidationError):
        CallPlanRequest.model_validate(body)


def test_the_plan_request_tells_a_null_from_a_field_left_out():
    cleared = CallPlanRequest.model_validate({"maxConcurrentCalls": None})
    assert "maxConcurrentCalls" in cleared.model_fields_set and cleared.maxConcurrentCalls is None
    assert "burstLimit" not in cleared.model_fields_set
    assert CallPlanRequest.model_validate({"burstMultiplier": "1.5"}).burstMultiplier == Decimal("1.5")
