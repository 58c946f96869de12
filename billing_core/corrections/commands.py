from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from billing_core.fields import CatalogKey, IdempotencyKey, Reason, Strict, TenantId
from billing_core.usage.commands import MAX_EVENT_ITEMS, UsageItem


class CorrectionRequest(Strict):
    """POST /usage/<id>/corrections: void the event, or amend it to these items."""
    action: Literal["void", "amend"]
    items: Annotated[list[UsageItem], Field(min_length=1, max_length=MAX_EVENT_ITEMS)] | None = None
    reason: Reason
    idempotencyKey: IdempotencyKey
    tenantId: TenantId | None = None


class RerateRequest(Strict):
    """POST /rerates: re-rate the charged usage that occurred in [from, to) (date-only: 00:00 UTC)."""
    from_: Annotated[str, Field(alias="from", max_length=64, description="ISO 8601 date or date-time")]
    to: Annotated[str, Field(max_length=64, description="ISO 8601 date or date-time (exclusive)")]
    tenantId: TenantId | None = None
    category: CatalogKey | None = None
    provider: CatalogKey | None = None
    model: CatalogKey | None = None
    unit: CatalogKey | None = None
    dryRun: bool = False
    idempotencyKey: IdempotencyKey | None = None

    model_config = {**Strict.model_config, "populate_by_name": True}
