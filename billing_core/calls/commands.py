from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, WithJsonSchema

from billing_core import money
from billing_core.fields import FeatureKey, NonNegativeAmount, Strict

MAX_CALLS = 1_000_000
MAX_MULTIPLIER = Decimal(100)


def _multiplier(value: Decimal) -> Decimal:
    value = money.bounded(value, maximum=MAX_MULTIPLIER, allow_zero=False)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


CallCount = Annotated[int, Field(ge=0, le=MAX_CALLS, strict=True)]
Multiplier = Annotated[
    Decimal, BeforeValidator(money.to_decimal), AfterValidator(_multiplier),
    PlainSerializer(money.format_decimal, return_type=str),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}], "description": "a decimal >= 1"}),
]
SettlementPolicy = Literal["grace", "strict"]


class CallPlanRequest(Strict):
    """A tenant's call plan (PATCH /wallet, billing.admin). A field left out keeps its value; an explicit
    null clears it: no limit, no burst, no grace limit (featureLimits: a key set to null is removed)."""
    maxConcurrentCalls: CallCount | None = None
    burstLimit: CallCount | None = None
    burstMultiplier: Multiplier | None = None
    callGraceLimit: NonNegativeAmount | None = None
    settlementPolicy: SettlementPolicy | None = None
    featureLimits: Annotated[dict[FeatureKey, CallCount | None], Field(max_length=100)] | None = None


PLAN_FIELDS = frozenset(CallPlanRequest.model_fields)
