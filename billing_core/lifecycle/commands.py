from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import (
    Field,
)

from billing_core.fields import (
    ExternalReference,
    FeatureKey,
    IdempotencyKey,
    NonNegativeAmount,
    PositiveAmount,
    Strict,
    TenantId,
    TtlSeconds,
)
from billing_core.usage.commands import MAX_ITEMS, UsageItem


class QuoteRequest(Strict):
    items: Annotated[list[UsageItem], Field(min_length=1, max_length=MAX_ITEMS)]
    ttlSeconds: Annotated[int, Field(ge=1, le=24 * 3600, strict=True)] | None = None  # default QUOTE_TTL_SECONDS
    tenantId: TenantId | None = None


class ReservationRequest(Strict):
    """Hold `amount`, or what `items` cost (priced as a quote, or at `quoteId`'s prices)."""
    featureKey: FeatureKey
    amount: PositiveAmount | None = None
    items: Annotated[list[UsageItem], Field(min_length=1, max_length=MAX_ITEMS)] | None = None
    quoteId: uuid.UUID | None = None
    ttlSeconds: TtlSeconds = 900
    idempotencyKey: IdempotencyKey
    externalReferenceId: ExternalReference | None = None
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
