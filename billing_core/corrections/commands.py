from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from billing_core.fields import IdempotencyKey, Reason, Strict, TenantId
from billing_core.usage.commands import MAX_EVENT_ITEMS, UsageItem


class CorrectionRequest(Strict):
    """POST /usage/<id>/corrections: void the event, or amend it to these items."""
    action: Literal["void", "amend"]
    items: Annotated[list[UsageItem], Field(min_length=1, max_length=MAX_EVENT_ITEMS)] | None = None
    reason: Reason
    idempotencyKey: IdempotencyKey
    tenantId: TenantId | None = None

    @model_validator(mode="after")
    def _items_for_amend(self) -> CorrectionRequest:
        if self.action == "amend" and not self.items:
            raise ValueError("items: an amend names the event's corrected items")
        if self.action == "void" and self.items:
            raise ValueError("items: a void takes no items")
        return self
