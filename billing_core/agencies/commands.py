from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from billing_core.catalog.commands import PriceRequest
from billing_core.fields import (
    CatalogKey,
    Description,
    IdempotencyKey,
    NonNegativeAmount,
    PositiveAmount,
    Strict,
    TenantId,
)

Funding = Literal["prepaid", "agency"]
SubAccountName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")]


class SubAccountRequest(Strict):
    """A new sub-account `<agencyId>:<name>` of the calling agency."""
    name: SubAccountName
    funding: Funding
    spendCap: NonNegativeAmount | None = None  # monthly (UTC), at resale prices; `agency` funding


class SubAccountAttachment(Strict):
    """The operator attaches any existing tenant (whatever its id) to the agency in the path."""
    tenantId: TenantId
    funding: Funding
    spendCap: NonNegativeAmount | None = None


class SubAccountChange(Strict):
    funding: Funding | None = None
    spendCap: NonNegativeAmount | None = None  # null clears it


class SubAccountTopUp(Strict):
    amount: PositiveAmount
    idempotencyKey: IdempotencyKey
    description: Description | None = None


class ResaleMultiplierRequest(Strict):
    """One row of the resale price book: the agency's own price times `multiplier`, for every
    sub-account or one, for the catalog items the named fields select (most specific wins)."""
    multiplier: NonNegativeAmount
    category: CatalogKey | None = None
    provider: CatalogKey | None = None
    model: CatalogKey | None = None
    unit: CatalogKey | None = None
    subAccountId: TenantId | None = None


class ResalePriceRowRequest(PriceRequest):
    """An explicit resale price (the PUT /pricing shape, any pricing model, effective-dated) for every
    sub-account of the agency or for `subAccountId`; it wins over the multipliers."""
    subAccountId: TenantId | None = None
