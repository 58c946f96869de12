"""Requests the service accepts, validated into exact types (pydantic, no web framework)."""
from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

from . import money

MAX_ITEMS = 1000

_DECIMAL_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"},
        {"type": "number"},
    ]
}


def _quantity(value: Decimal) -> Decimal:
    return money.bounded(value, maximum=money.MAX_QUANTITY, allow_zero=True)


def _positive_amount(value: Decimal) -> Decimal:
    return money.bounded(value, maximum=money.MAX_AMOUNT, allow_zero=False)


# Input decimals: a JSON number (parsed as Decimal, never float) or a decimal string.
Quantity = Annotated[
    Decimal, BeforeValidator(money.to_decimal), AfterValidator(_quantity),
    PlainSerializer(money.format_decimal, return_type=str), WithJsonSchema(_DECIMAL_SCHEMA),
]
PositiveAmount = Annotated[
    Decimal, BeforeValidator(money.to_decimal), AfterValidator(_positive_amount),
    PlainSerializer(money.format_decimal, return_type=str), WithJsonSchema(_DECIMAL_SCHEMA),
]

def _storable(value: Any) -> Any:
    """Refuse what PostgreSQL text and jsonb cannot hold (NUL, lone surrogates, NaN), here rather
    than as a failure in the database."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text") from None
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("numbers must be finite")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key)
            _storable(item)
    elif isinstance(value, list):
        for item in value:
            _storable(item)
    return value


def _text(max_length: int) -> Any:
    return Annotated[str, Field(min_length=1, max_length=max_length), AfterValidator(_storable)]


CatalogKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/+-]+$")]
FeatureKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")]
IdempotencyKey = _text(255)
TenantId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class UsageItem(Strict):
    category: CatalogKey
    provider: CatalogKey
    model: CatalogKey
    unit: CatalogKey
    quantity: Quantity


class QuoteRequest(Strict):
    items: Annotated[list[UsageItem], Field(min_length=1, max_length=MAX_ITEMS)]
    tenantId: TenantId | None = None


class ChargeRequest(Strict):
    featureKey: FeatureKey
    items: Annotated[list[UsageItem], Field(min_length=1, max_length=MAX_ITEMS)]
    externalReferenceId: _text(255) | None = None
    idempotencyKey: IdempotencyKey | None = None
    metadata: Annotated[dict[str, Any], AfterValidator(_storable)] = Field(default_factory=dict)
    tenantId: TenantId | None = None


MAX_BATCH_EVENTS = 1000


class ChargeBatchRequest(Strict):
    """Many charges in one submission; each event is a POST /charge body and is validated on its own,
    so one bad event does not sink the others."""
    events: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]
    tenantId: TenantId | None = None


class TopUpRequest(Strict):
    amount: PositiveAmount
    idempotencyKey: IdempotencyKey
    description: Annotated[str, Field(max_length=500), AfterValidator(_storable)] | None = None
    tenantId: TenantId | None = None


def fingerprint_body(command: BaseModel) -> dict[str, Any]:
    """The canonical form of a request, for comparing two requests under one idempotency key."""
    return command.model_dump(mode="json", exclude={"idempotencyKey", "tenantId"})
