"""Requests the service accepts, validated into exact types (pydantic, no web framework)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

from . import exactjson, money

MAX_ITEMS = 1000
# bounded work per request: a charge is a few priced items and a little context, never a payload
MAX_EVENT_ITEMS = 100
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


def _shallow_metadata(value: Any) -> Any:
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


def _small_metadata(value: dict[str, Any]) -> dict[str, Any]:
    try:
        size = len(exactjson.dumps(value).encode("utf-8"))
    except (TypeError, ValueError):
        return value  # not storable either: _storable names the reason
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes serialized, not {size}")
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
    ttlSeconds: Annotated[int, Field(ge=1, le=24 * 3600, strict=True)] | None = None  # default QUOTE_TTL_SECONDS
    tenantId: TenantId | None = None


class ChargeRequest(Strict):
    featureKey: FeatureKey
    items: Annotated[list[UsageItem], Field(min_length=1, max_length=MAX_EVENT_ITEMS)]
    externalReferenceId: _text(255) | None = None
    idempotencyKey: IdempotencyKey | None = None
    metadata: Annotated[dict[str, Any], BeforeValidator(_shallow_metadata), AfterValidator(_storable),
                        AfterValidator(_small_metadata)] = Field(default_factory=dict)
    # settle this hold: the actual cost is debited and the rest of the hold released, in one entry
    reservationId: uuid.UUID | None = None
    # price the items at this binding quote's unit prices
    quoteId: uuid.UUID | None = None
    tenantId: TenantId | None = None


MAX_BATCH_EVENTS = 1000
MAX_BATCH_ITEMS = 10_000  # items over all events of one batch request


class ChargeBatchRequest(Strict):
    """Many charges in one submission; each event is a POST /charge body and is validated on its own,
    so one bad event does not sink the others."""
    events: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]
    tenantId: TenantId | None = None


Description = Annotated[str, Field(max_length=500), AfterValidator(_storable)]
Reason = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_storable)]
Priority = Annotated[int, Field(ge=0, le=100, strict=True)]


class TopUpRequest(Strict):
    """A top-up is a credit grant: paid or promotional, optionally expiring, drawn on by priority."""
    amount: PositiveAmount
    idempotencyKey: IdempotencyKey
    description: Description | None = None
    kind: Literal["paid", "promotional"] = "paid"
    expiresAt: Timestamp | None = None
    priority: Priority = 50
    tenantId: TenantId | None = None


class ReservationRequest(Strict):
    """Hold `amount`, or what `items` cost (priced as a quote, or at `quoteId`'s prices)."""
    featureKey: FeatureKey
    amount: PositiveAmount | None = None
    items: Annotated[list[UsageItem], Field(min_length=1, max_length=MAX_ITEMS)] | None = None
    quoteId: uuid.UUID | None = None
    ttlSeconds: TtlSeconds = 900
    idempotencyKey: IdempotencyKey
    externalReferenceId: _text(255) | None = None
    tenantId: TenantId | None = None


class ExtendReservationRequest(Strict):
    """Hold `amount` more and/or keep the hold until `ttlSeconds` from now (never shortened)."""
    amount: PositiveAmount | None = None
    ttlSeconds: TtlSeconds | None = None
    idempotencyKey: IdempotencyKey
    tenantId: TenantId | None = None


class ReleaseReservationRequest(Strict):
    idempotencyKey: IdempotencyKey | None = None
    tenantId: TenantId | None = None


class BudgetRequest(Strict):
    limit: NonNegativeAmount
    period: Literal["day", "month"]
    action: Literal["reject", "alert"] = "reject"
    tenantId: TenantId | None = None


class RefundRequest(Strict):
    transactionId: uuid.UUID
    amount: PositiveAmount | None = None  # all that is left to refund when absent
    reason: Reason
    idempotencyKey: IdempotencyKey
    tenantId: TenantId | None = None


class AdjustmentRequest(Strict):
    """A signed manual correction: positive credits a grant, negative debits like a charge."""
    amount: SignedAmount
    reason: Reason
    idempotencyKey: IdempotencyKey
    kind: Literal["paid", "promotional"] = "paid"
    expiresAt: Timestamp | None = None
    tenantId: TenantId | None = None


class PriceTier(Strict):
    """A graduated tier: units of the month up to `upTo` (null: the open last tier) at `unitPrice`."""
    upTo: Quantity | None
    unitPrice: NonNegativeAmount


class PriceRequest(Strict):
    """A new catalog price from `effectiveFrom` (default now); the price in force until then is closed.
    `pricingModel` unit (default: unitPrice), package (packageSize, packagePrice) or graduated (tiers);
    any model may set minimumQuantity. Changing a price's model is a new row like any change."""
    category: CatalogKey
    provider: CatalogKey
    model: CatalogKey
    unit: CatalogKey
    unitPrice: NonNegativeAmount | None = None
    pricingModel: Literal["unit", "package", "graduated"] | None = None
    packageSize: Quantity | None = None
    packagePrice: NonNegativeAmount | None = None
    minimumQuantity: Quantity | None = None
    tiers: Annotated[list[PriceTier], Field(min_length=1, max_length=50)] | None = None
    effectiveFrom: Timestamp | None = None
    description: Description | None = None
    tenantId: TenantId | None = None  # absent: the global catalog


class PriceAdjustmentRequest(Strict):
    """A tenant's multiplier of the global prices (0.9: 10% off), for every item or a narrower scope."""
    tenantId: TenantId
    multiplier: NonNegativeAmount
    category: CatalogKey | None = None
    provider: CatalogKey | None = None
    model: CatalogKey | None = None
    unit: CatalogKey | None = None
    effectiveFrom: Timestamp | None = None


class CostRequest(Strict):
    """What the platform pays its provider per unit of a catalog item, from `effectiveFrom` (default now)."""
    category: CatalogKey
    provider: CatalogKey
    model: CatalogKey
    unit: CatalogKey
    unitCost: NonNegativeAmount
    effectiveFrom: Timestamp | None = None


class WalletSettingsRequest(Strict):
    status: Literal["active", "blocked"] | None = None
    overdraftLimit: NonNegativeAmount | None = None
    clearFlag: bool | None = None
    tenantId: TenantId | None = None


def fingerprint_body(command: BaseModel) -> dict[str, Any]:
    """The canonical form of a request, for comparing two requests under one idempotency key."""
    return command.model_dump(mode="json", exclude={"idempotencyKey", "tenantId"})
