"""Requests the service accepts, validated into exact types (pydantic, no web framework)."""
from __future__ import annotations

from datetime import datetime, timezone
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

from billing_core import exactjson, money

MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 32

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


def _signed_amount(value: Decimal) -> Decimal:
    return money.bounded(value, maximum=money.MAX_AMOUNT, allow_zero=False, allow_negative=True)


def _non_negative_amount(value: Decimal) -> Decimal:
    return money.bounded(value, maximum=money.MAX_AMOUNT, allow_zero=True)


def _utc(value: datetime) -> datetime:
    """Times without an offset are UTC; any offset is converted here, so the database sees UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past the calendar in UTC
        raise ValueError("must be a date-time within the calendar") from None


# Input decimals: a JSON number (parsed as Decimal, never float) or a decimal string.
Quantity = Annotated[
    Decimal, BeforeValidator(money.to_decimal), AfterValidator(_quantity),
    PlainSerializer(money.format_decimal, return_type=str), WithJsonSchema(_DECIMAL_SCHEMA),
]
PositiveAmount = Annotated[
    Decimal, BeforeValidator(money.to_decimal), AfterValidator(_positive_amount),
    PlainSerializer(money.format_decimal, return_type=str), WithJsonSchema(_DECIMAL_SCHEMA),
]
SignedAmount = Annotated[
    Decimal, BeforeValidator(money.to_decimal), AfterValidator(_signed_amount),
    PlainSerializer(money.format_decimal, return_type=str), WithJsonSchema(_DECIMAL_SCHEMA),
]
NonNegativeAmount = Annotated[
    Decimal, BeforeValidator(money.to_decimal), AfterValidator(_non_negative_amount),
    PlainSerializer(money.format_decimal, return_type=str), WithJsonSchema(_DECIMAL_SCHEMA),
]
Timestamp = Annotated[datetime, AfterValidator(_utc),
                      WithJsonSchema({"type": "string", "format": "date-time"})]
TtlSeconds = Annotated[int, Field(ge=1, le=7 * 24 * 3600, strict=True)]


def storable(value: Any) -> Any:
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
            storable(key)
            storable(item)
    elif isinstance(value, list):
        for item in value:
            storable(item)
    return value


def shallow_metadata(value: Any) -> Any:
    """Refuse metadata nested deeper than MAX_METADATA_DEPTH before anything recurses into it (the
    storability check, the fingerprint's serialization): walked with a stack, not recursion."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"must be nested at most {MAX_METADATA_DEPTH} levels deep")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return value


def small_metadata(value: dict[str, Any]) -> dict[str, Any]:
    try:
        size = len(exactjson.dumps(value).encode("utf-8"))
    except (TypeError, ValueError):
        return value  # not storable either: storable names the reason
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes serialized, not {size}")
    return value


def bounded_text(max_length: int) -> Any:
    return Annotated[str, Field(min_length=1, max_length=max_length), AfterValidator(storable)]


CatalogKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/+-]+$")]
FeatureKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")]
IdempotencyKey = bounded_text(255)
ExternalReference = bounded_text(255)
TenantId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)



Description = Annotated[str, Field(max_length=500), AfterValidator(storable)]
Reason = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(storable)]
Priority = Annotated[int, Field(ge=0, le=100, strict=True)]





