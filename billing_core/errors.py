"""Domain errors. Each carries a stable machine-readable code; the web layer maps codes to HTTP."""
from __future__ import annotations

from typing import Any


class BillingError(Exception):
    code = "billing_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ValidationFailed(BillingError):
    code = "validation_error"

    def __init__(self, field: str, message: str, errors: list[dict[str, Any]] | None = None):
        details: dict[str, Any] = {"field": field}
        if errors:
            details["errors"] = errors
        super().__init__(f"{field}: {message}" if field else message, details)


class NotFound(BillingError):
    code = "not_found"


class PriceNotFound(BillingError):
    code = "price_not_found"


class InsufficientBalance(BillingError):
    code = "insufficient_balance"


class IdempotencyConflict(BillingError):
    code = "idempotency_conflict"


class WalletBlocked(BillingError):
    code = "wallet_blocked"


class ReservationExpired(BillingError):
    code = "reservation_expired"


class ReservationClosed(BillingError):
    """The hold was settled or released already; it cannot be settled, extended or released again."""
    code = "reservation_closed"


class ReservationExceeded(BillingError):
    code = "reservation_exceeded"


class BudgetExceeded(BillingError):
    code = "budget_exceeded"


class QuoteExpired(BillingError):
    code = "quote_expired"


class RefundExceeded(BillingError):
    code = "refund_exceeded"


class ConcurrencyLimit(BillingError):
    """Every call slot of the tenant's plan (or of the feature) is taken: the call is refused at start."""
    code = "concurrency_limit"


class SubAccountExists(BillingError):
    """The tenant id a sub-account would take already has a billing record, or is one already."""
    code = "sub_account_exists"


class TenantIsAgency(BillingError):
    """A tenant that is an agency cannot become anyone's sub-account (one level only)."""
    code = "tenant_is_agency"


class RefundBilledByAgency(BillingError):
    """A debit of usage billed through an agency that a refund cannot give back by itself: an
    agency-funded sub-account's zero debit (it paid LAD nothing; what it paid, it paid its agency
    outside LAD) or an agency's debit for a sub-account's event (a refund of it alone would leave the
    resale record and the margins out of step). A void or amend of the sub-account's event
    (`POST /usage/<id>/corrections`) corrects both levels; a prepaid sub-account's own debit refunds
    both levels."""
    code = "refund_billed_by_agency"


class SubAccountHasBalance(BillingError):
    """A tenant with money (or holds) in its wallet cannot become an agency-funded sub-account, which
    has no balance of its own: attach it as `prepaid`, or empty the wallet first."""
    code = "sub_account_has_balance"
