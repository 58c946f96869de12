"""The ledger's model: wallets, ledger entries, credit grants and holds as the database keeps them, the
states they move through, and the outcome of settling a charge. Plain values, no persistence.

The statuses are StrEnums: a member equals its string (`HoldStatus.ACTIVE == "active"`), so SQL
parameters, stored rows and JSON answers carry the same words as before.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from billing_core import money


class GrantKind(StrEnum):
    PAID = "paid"
    PROMOTIONAL = "promotional"
    DEBT = "debt"  # the wallet's one grant that goes below zero: what no other grant could cover


class HoldStatus(StrEnum):
    """A hold (the API's reservation) is active until it is settled by a charge, released, or expired."""
    ACTIVE = "active"
    SETTLED = "settled"
    RELEASED = "released"
    EXPIRED = "expired"


class EntryType(StrEnum):
    TOPUP = "topup"
    DEBIT = "debit"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    EXPIRY = "expiry"
    HOLD = "hold"
    HOLD_RELEASE = "hold_release"
    CORRECTION = "correction"  # a void or amend of one usage event (billing_core/corrections)


class UsageEventStatus(StrEnum):
    """A usage event is accepted as pending and then charged or rejected, exactly once."""
    PENDING = "pending"
    CHARGED = "charged"
    REJECTED = "rejected"


class WalletStatus(StrEnum):
    ACTIVE = "active"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class Wallet:
    id: uuid.UUID
    tenant_id: str
    currency: str
    current_balance: Decimal
    reserved_balance: Decimal
    overdraft_limit: Decimal
    status: str
    created_at: datetime
    updated_at: datetime
    flagged_at: datetime | None = None
    flag_reason: str | None = None
    in_debt_since: datetime | None = None  # a call (grace policy) settled past what it could spend

    @property
    def available_balance(self) -> Decimal:
        return money.subtract(self.current_balance, self.reserved_balance)

    @property
    def spendable(self) -> Decimal:
        """What a debit may take: the available balance plus the overdraft allowed."""
        return money.add(self.available_balance, self.overdraft_limit)

    @property
    def in_debt(self) -> bool:
        return owes(self.current_balance, self.overdraft_limit)


def owes(balance: Decimal, overdraft_limit: Decimal) -> bool:
    """In debt: the balance is below zero beyond the overdraft the wallet is allowed (with none, below
    zero). Such a wallet is frozen for new calls until credits repay it (calls/admission.py)."""
    return money.add(balance, overdraft_limit) < 0


@dataclass(frozen=True)
class LedgerEntry:
    id: uuid.UUID
    seq: int
    tenant_id: str
    wallet_id: uuid.UUID
    entry_type: str
    amount: Decimal
    balance_before: Decimal
    balance_after: Decimal
    usage_event_id: uuid.UUID | None
    reference: str | None
    description: str | None
    idempotency_key: str | None
    created_by: str | None
    created_at: datetime
    reserved_change: Decimal = Decimal(0)
    reservation_id: uuid.UUID | None = None
    grant_id: uuid.UUID | None = None
    related_entry_id: uuid.UUID | None = None
    sub_account_event_id: uuid.UUID | None = None  # an agency's debit for its sub-account's usage event
    agency_amount: Decimal | None = None  # a sub-account's refund or correction: its agency's price moved by


@dataclass
class Grant:
    """Credits with their own kind, priority and expiry; `remaining` is what debits have not taken yet.
    Changed only by the WalletBook that holds the wallet's lock."""
    id: uuid.UUID
    tenant_id: str
    wallet_id: uuid.UUID
    kind: str
    amount: Decimal
    remaining: Decimal
    priority: int
    expires_at: datetime | None
    expired_at: datetime | None
    source: str
    reference: str | None
    created_at: datetime
    updated_at: datetime

    def overdue(self, at: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= at


@dataclass
class Hold:
    """Credits set aside for work whose cost is not known yet (a row of `reservations`). Changed only
    by the WalletBook that holds the wallet's lock."""
    id: uuid.UUID
    tenant_id: str
    wallet_id: uuid.UUID
    feature_key: str
    external_reference_id: str | None
    quote_id: uuid.UUID | None
    status: str
    amount: Decimal
    settled_amount: Decimal | None
    usage_event_id: uuid.UUID | None
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    burst_multiplier: Decimal | None = None  # a burst call: its settlement is priced at this multiple
    sub_account_id: str | None = None  # an agency's hold backing this sub-account's hold (agencies/holds.py)
    agency_id: str | None = None  # an agency-funded sub-account's hold: set aside on this agency's wallet

    @property
    def reserving(self) -> Decimal:
        """What the hold sets aside on its own wallet while active: nothing when its agency's wallet does."""
        return Decimal(0) if self.agency_id is not None else self.amount

    @property
    def burst(self) -> bool:
        return self.burst_multiplier is not None


@dataclass(frozen=True)
class SettleOutcome:
    """What settling one pending usage event came to: charged at `total_cost`, or rejected with a code."""
    event_id: uuid.UUID
    status: UsageEventStatus
    total_cost: Decimal | None = None
    code: str | None = None
    reason: str | None = None
    details: dict[str, Any] | None = None
