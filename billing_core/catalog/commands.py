from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
)

from billing_core.fields import CatalogKey, Description, NonNegativeAmount, Quantity, Reason, Strict, TenantId, Timestamp


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
    # a price from a past effectiveFrom is a catalog correction, and names why (see POST /rerates)
    correctionReason: Reason | None = None


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
