from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from billing_core.fields import IdempotencyKey, Reason, Strict, TenantId
from billing_core.usage.commands import MAX_EVENT_ITEMS, UsageItem


class CorrectionRequest(Strict):
    """POST /usage/<id>/corrections: void the event, or amend it to these items."""
    action: Literal["void", "amend"]
    items: Annotated[list[UsageItem], Field(min_length=1, max_length=MAX_EVENT_ITEMS)] | None = None
    reason: Reason
    idempotencyKey: IdempotencyKey
    tenantId: TenantId | None = None
