from __future__ import annotations

import uuid
from typing import Literal

from billing_core.calls.commands import CallPlanRequest
from billing_core.documents.commands import TaxTreatmentRequest
from billing_core.fields import (
    Description,
    IdempotencyKey,
    NonNegativeAmount,
    PositiveAmount,
    Priority,
    Reason,
    SignedAmount,
    Strict,
    TenantId,
    Timestamp,
)


class TopUpRequest(Strict):
    """A top-up is a credit grant: paid or promotional, optionally expiring, drawn on by priority."""
    amount: PositiveAmount
    idempotencyKey: IdempotencyKey
    description: Description | None = None
    kind: Literal["paid", "promotional"] = "paid"
    expiresAt: Timestamp | None = None
    priority: Priority = 50
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


class WalletSettingsRequest(CallPlanRequest):
    """Wallet settings and, for calls, the tenant's call plan (see CallPlanRequest)."""
    status: Literal["active", "blocked"] | None = None
    overdraftLimit: NonNegativeAmount | None = None
    clearFlag: bool | None = None
    tax: TaxTreatmentRequest | None = None  # how the tenant's credit purchases are taxed (receipts)
    reseller: bool | None = None  # an agency: it may create sub-accounts and resell to them
    tenantId: TenantId | None = None
