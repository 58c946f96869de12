"""Query parameters and response bodies, as pydantic models; /openapi.json is generated from these
and from the request commands in billing_core.fields."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from billing_core.fields import CatalogKey, FeatureKey, TenantId
from billing_core.usage.commands import ChargeRequest

DecimalString = Annotated[str, Field(pattern=r"^-?\d+(\.\d+)?$", examples=["0.037"])]
Timestamp = Annotated[str, Field(description="ISO 8601 UTC", examples=["2025-12-27T10:00:00Z"])]
TimeBound = Annotated[str, Field(max_length=64, description="ISO 8601 date or date-time (UTC when no offset)")]
Uuid = Annotated[str, Field(format="uuid")]


EntryType = Literal["topup", "debit", "refund", "adjustment", "expiry", "hold", "hold_release"]


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PricingQuery(Query):
    category: CatalogKey | None = None
    provider: CatalogKey | None = None
    model: CatalogKey | None = None
    unit: CatalogKey | None = None
    tenantId: TenantId | None = None


class TenantQuery(Query):
    tenantId: TenantId | None = None


class PricingAtQuery(PricingQuery):
    at: TimeBound | None = None


class ReservationsQuery(Query):
    status: Literal["active", "settled", "released", "expired"] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, Field(max_length=200)] | None = None
    tenantId: TenantId | None = None


class EntitlementQuery(Query):
    featureKey: FeatureKey
    estimatedCost: Annotated[str, Field(max_length=64)] = "0"
    tenantId: TenantId | None = None
    # or price one item as a quote would (added to estimatedCost): all five, or none
    category: CatalogKey | None = None
    provider: CatalogKey | None = None
    model: CatalogKey | None = None
    unit: CatalogKey | None = None
    quantity: Annotated[str, Field(max_length=64)] | None = None


class ChargeQuery(Query):
    wait: Annotated[int, Field(ge=0, le=30)] = 10
    tenantId: TenantId | None = None


class UsageQuery(Query):
    from_: Annotated[TimeBound | None, Field(alias="from")] = None
    to: TimeBound | None = None
    featureKey: FeatureKey | None = None
    status: Literal["pending", "charged", "rejected"] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, Field(max_length=200)] | None = None
    tenantId: TenantId | None = None


class TransactionsQuery(Query):
    from_: Annotated[TimeBound | None, Field(alias="from")] = None
    to: TimeBound | None = None
    type: EntryType | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, Field(max_length=200)] | None = None
    tenantId: TenantId | None = None


# --- responses ---------------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorResponse(BaseModel):
    success: Literal[False]
    error: ErrorDetail


class TierOut(BaseModel):
    upTo: DecimalString | None
    unitPrice: DecimalString


class TierLine(BaseModel):
    quantity: DecimalString
    unitPrice: DecimalString
    amount: DecimalString


class PackagesLine(BaseModel):
    count: DecimalString
    packageSize: DecimalString | None
    packagePrice: DecimalString | None
    amount: DecimalString


class PriceOut(BaseModel):
    category: str
    provider: str
    model: str
    unit: str
    unitPrice: DecimalString | None  # the unit model's; null for package and graduated
    currency: str
    description: str | None
    scope: Literal["global", "tenant"]
    effectiveFrom: Timestamp
    effectiveTo: Timestamp | None
    # pricing models (see "Pricing models" in the README)
    pricingModel: Literal["unit", "package", "graduated"] = "unit"
    packageSize: DecimalString | None = None
    packagePrice: DecimalString | None = None
    minimumQuantity: DecimalString | None = None
    tiers: list[TierOut] | None = None
    multiplier: DecimalString | None = None  # the tenant's multiplier, already applied to the prices


class PricingResponse(BaseModel):
    """`price` when all four of category, provider, model and unit are given; else `prices`."""
    success: Literal[True]
    price: PriceOut | None = None
    prices: list[PriceOut] | None = None


class QuoteLine(BaseModel):
    category: str
    provider: str
    model: str
    unit: str
    quantity: DecimalString
    unitPrice: DecimalString | None  # null for package and graduated items: see tiers / packages
    totalCost: DecimalString
    pricingModel: Literal["unit", "package", "graduated"] = "unit"
    billedQuantity: DecimalString | None = None
    tiers: list[TierLine] | None = None
    packages: PackagesLine | None = None


class Quote(BaseModel):
    """A binding quote: a charge or reservation naming `quoteId` before `expiresAt` is priced at these unit prices."""
    quoteId: Uuid
    expiresAt: Timestamp
    totalCost: DecimalString
    currency: str
    items: list[QuoteLine]


class QuoteResponse(BaseModel):
    success: Literal[True]
    quote: Quote


class WalletOut(BaseModel):
    id: Uuid
    tenantId: str
    currentBalance: DecimalString
    reservedBalance: DecimalString
    availableBalance: DecimalString
    overdraftLimit: DecimalString
    currency: str
    status: Literal["active", "blocked"]
    flagged: bool
    flagReason: str | None


class GrantOut(BaseModel):
    """A credit grant; `debt` is what an overdraft or clawback took beyond the credits (negative)."""
    id: Uuid
    kind: Literal["paid", "promotional", "debt"]
    amount: DecimalString
    remaining: DecimalString
    priority: int
    expiresAt: Timestamp | None
    source: str
    createdAt: Timestamp


class WalletWithGrants(WalletOut):
    grants: list[GrantOut]


class WalletResponse(BaseModel):
    success: Literal[True]
    wallet: WalletWithGrants


class WalletSettingsResponse(BaseModel):
    success: Literal[True]
    wallet: WalletOut


class TransactionOut(BaseModel):
    id: Uuid
    type: EntryType
    amount: DecimalString
    balanceBefore: DecimalString
    balanceAfter: DecimalString
    reservedChange: DecimalString
    description: str | None
    usageEventId: Uuid | None
    reservationId: Uuid | None
    grantId: Uuid | None
    relatedTransactionId: Uuid | None
    createdAt: Timestamp


class TransactionResponse(BaseModel):
    success: Literal[True]
    transaction: TransactionOut


class CreditResponse(BaseModel):
    """A top-up or positive adjustment also returns the grant it created."""
    success: Literal[True]
    transaction: TransactionOut
    grant: GrantOut | None = None


class ReservationOut(BaseModel):
    id: Uuid
    status: Literal["active", "settled", "released", "expired"]
    amount: DecimalString
    settledAmount: DecimalString | None
    featureKey: str
    externalReferenceId: str | None
    quoteId: Uuid | None
    usageEventId: Uuid | None
    expiresAt: Timestamp
    createdAt: Timestamp
    closedAt: Timestamp | None


class ReservationResponse(BaseModel):
    success: Literal[True]
    reservation: ReservationOut


class ReservationsResponse(BaseModel):
    success: Literal[True]
    reservations: list[ReservationOut]
    nextCursor: str | None


class BudgetOut(BaseModel):
    featureKey: str
    limit: DecimalString
    period: Literal["day", "month"]
    action: Literal["reject", "alert"]
    periodStart: Timestamp
    spent: DecimalString
    held: DecimalString
    remaining: DecimalString


class BudgetResponse(BaseModel):
    success: Literal[True]
    budget: BudgetOut


class BudgetsResponse(BaseModel):
    success: Literal[True]
    budgets: list[BudgetOut]


class EntitlementOut(BaseModel):
    allowed: bool
    availableBalance: DecimalString
    reason: Literal["insufficient_balance", "wallet_blocked", "budget_exceeded"] | None


class EntitlementResponse(BaseModel):
    success: Literal[True]
    entitlement: EntitlementOut


class PriceResponse(BaseModel):
    success: Literal[True]
    price: PriceOut


class WebhookResponse(BaseModel):
    received: Literal[True]
    duplicate: bool


class Rejection(BaseModel):
    code: str
    message: str | None
    details: dict[str, Any]


class UsageEventOut(BaseModel):
    id: Uuid
    featureKey: str
    status: Literal["pending", "charged", "rejected"]
    totalCost: DecimalString | None
    currency: str
    externalReferenceId: str | None
    createdAt: Timestamp
    chargedAt: Timestamp | None
    rejection: Rejection | None = None


class ChargeResponse(BaseModel):
    success: Literal[True]
    taskId: Uuid
    usageEvent: UsageEventOut
    transaction: TransactionOut


class ChargeAccepted(BaseModel):
    """The charge is recorded and will be charged by a worker; poll `Location` (GET /tasks/<taskId>)."""
    success: Literal[True]
    taskId: Uuid
    usageEvent: UsageEventOut


class ChargeBatchDocumented(BaseModel):
    """POST /charges: each event is the body of a POST /charge."""
    events: Annotated[list[ChargeRequest], Field(min_length=1, max_length=1000)]
    tenantId: TenantId | None = None


class BatchResult(BaseModel):
    index: int
    status: Literal["accepted", "replayed", "error"]
    taskId: Uuid | None
    usageEventId: Uuid | None
    error: ErrorDetail | None


class ChargeBatchResponse(BaseModel):
    success: Literal[True]
    results: list[BatchResult]


class TaskOut(BaseModel):
    id: Uuid
    state: Literal["pending", "charged", "rejected"]
    usageEvent: UsageEventOut
    transaction: TransactionOut | None = None
    error: Rejection | None = None


class TaskResponse(BaseModel):
    success: Literal[True]
    task: TaskOut


class Bucket(BaseModel):
    events: int
    cost: DecimalString


class UsageSummary(BaseModel):
    totalEvents: int
    totalCost: DecimalString
    byFeature: dict[str, Bucket]
    byStatus: dict[str, Bucket]


class UsagePage(BaseModel):
    events: list[UsageEventOut]
    summary: UsageSummary
    nextCursor: str | None


class UsageResponse(BaseModel):
    success: Literal[True]
    usage: UsagePage


class UsageItemOut(BaseModel):
    category: str
    provider: str
    model: str
    unit: str
    quantity: DecimalString
    unitPrice: DecimalString | None
    totalCost: DecimalString | None
    pricingModel: Literal["unit", "package", "graduated"] = "unit"
    billedQuantity: DecimalString | None = None
    tiers: list[TierLine] | None = None
    packages: PackagesLine | None = None


class UsageEventDetail(UsageEventOut):
    metadata: dict[str, Any]
    items: list[UsageItemOut]
    taskId: Uuid
    transactionId: Uuid | None


class UsageEventResponse(BaseModel):
    success: Literal[True]
    usageEvent: UsageEventDetail


class TransactionsResponse(BaseModel):
    success: Literal[True]
    transactions: list[TransactionOut]
    nextCursor: str | None


class VerifyResponse(BaseModel):
    success: Literal[True]
    ok: bool
    walletsChecked: int
    mismatches: list[dict[str, Any]]


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}


# --- pricing models, costs and margins ----------------------------------------------------------------


class AdjustmentOut(BaseModel):
    id: Uuid
    tenantId: str
    multiplier: DecimalString
    category: str | None
    provider: str | None
    model: str | None
    unit: str | None
    effectiveFrom: Timestamp
    effectiveTo: Timestamp | None


class AdjustmentResponse(BaseModel):
    success: Literal[True]
    adjustment: AdjustmentOut


class AdjustmentsResponse(BaseModel):
    success: Literal[True]
    adjustments: list[AdjustmentOut]


class AdjustmentsQuery(Query):
    tenantId: TenantId | None = None


class CostOut(BaseModel):
    id: Uuid
    category: str
    provider: str
    model: str
    unit: str
    unitCost: DecimalString
    currency: str
    effectiveFrom: Timestamp
    effectiveTo: Timestamp | None


class CostResponse(BaseModel):
    success: Literal[True]
    cost: CostOut


class CostsResponse(BaseModel):
    success: Literal[True]
    costs: list[CostOut]


class CostsQuery(Query):
    category: CatalogKey | None = None
    provider: CatalogKey | None = None
    model: CatalogKey | None = None
    unit: CatalogKey | None = None


class MarginsQuery(Query):
    from_: Annotated[TimeBound | None, Field(alias="from")] = None  # default: the start of this UTC month
    to: TimeBound | None = None  # default: now
    groupBy: Literal["tenant", "featureKey", "category", "provider", "model"] = "tenant"
    tenantId: TenantId | None = None


class MarginGroup(BaseModel):
    key: str
    revenue: DecimalString
    cost: DecimalString
    margin: DecimalString
    marginPercent: DecimalString | None
    events: int
    uncostedRevenue: DecimalString
    uncostedItems: int


class Uncosted(BaseModel):
    revenue: DecimalString
    items: int


class Margins(BaseModel):
    """Over charged usage less refunds: revenue, cost and margin of the costed items; items with no
    provider cost in force are counted apart (`uncosted`), never as a zero cost."""
    revenue: DecimalString
    cost: DecimalString
    margin: DecimalString
    marginPercent: DecimalString | None
    groups: list[MarginGroup]
    uncosted: Uncosted
    groupBy: str
    from_: Annotated[Timestamp, Field(alias="from")]
    to: Timestamp


class MarginsResponse(BaseModel):
    success: Literal[True]
    margins: Margins


class InvoiceLineMargin(BaseModel):
    lineNumber: int
    featureKey: str | None
    category: str | None
    provider: str | None
    model: str | None
    unit: str | None
    unitPrice: DecimalString | None
    quantity: DecimalString | None
    exactAmount: DecimalString
    priorPeriod: bool
    revenue: DecimalString  # of the costed parts of the line
    cost: DecimalString
    margin: DecimalString
    marginPercent: DecimalString | None
    uncostedRevenue: DecimalString
    uncostedItems: int


class InvoiceMarginsQuery(Query):
    period: Annotated[str, Field(max_length=7, description="YYYY-MM; default: the current month")] | None = None
    tenantId: TenantId | None = None


class InvoiceMargins(BaseModel):
    """Operators only: a month's invoice usage lines with their provider cost and margin."""
    tenantId: str
    period: str
    lines: list[InvoiceLineMargin]


class InvoiceMarginsResponse(BaseModel):
    success: Literal[True]
    invoiceMargins: InvoiceMargins
