from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
)

from billing_core.fields import (
    CatalogKey,
    ExternalReference,
    FeatureKey,
    IdempotencyKey,
    Quantity,
    Strict,
    TenantId,
    Timestamp,
    shallow_metadata,
    small_metadata,
    storable,
)

MAX_ITEMS = 1000


# bounded work per request: a charge is a few priced items and a little context, never a payload
MAX_EVENT_ITEMS = 100


class UsageItem(Strict):
    category: CatalogKey
    provider: CatalogKey
    model: CatalogKey
    unit: CatalogKey
    quantity: Quantity


class ChargeRequest(Strict):
    featureKey: FeatureKey
    items: Annotated[list[UsageItem], Field(min_length=1, max_length=MAX_EVENT_ITEMS)]
    externalReferenceId: ExternalReference | None = None
    idempotencyKey: IdempotencyKey | None = None
    metadata: Annotated[dict[str, Any], BeforeValidator(shallow_metadata), AfterValidator(storable),
                        AfterValidator(small_metadata)] = Field(default_factory=dict)
    # settle this hold: the actual cost is debited and the rest of the hold released, in one entry
    reservationId: uuid.UUID | None = None
    # price the items at this binding quote's unit prices
    quoteId: uuid.UUID | None = None
    tenantId: TenantId | None = None
    # when the usage happened, for a record that arrives late (ISO 8601; UTC when no offset)
    occurredAt: Timestamp | None = None


MAX_BATCH_EVENTS = 1000


MAX_BATCH_ITEMS = 10_000  # items over all events of one batch request


class ChargeBatchRequest(Strict):
    """Many charges in one submission; each event is a POST /charge body and is validated on its own,
    so one bad event does not sink the others."""
    events: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]
    tenantId: TenantId | None = None


def fingerprint_body(command: BaseModel) -> dict[str, Any]:
    """The canonical form of a request, for comparing two requests under one idempotency key."""
    return command.model_dump(mode="json", exclude={"idempotencyKey", "tenantId"})
