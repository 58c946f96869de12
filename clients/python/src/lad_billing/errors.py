"""Errors raised by the client: one class per error code of the LAD Billing contract.

Every class carries the server's `code`, `message`, `details` and HTTP `status`; a request that
carried an idempotency key also carries it, so a caller may repeat the exact request later.
"""
from __future__ import annotations

from typing import Any


class BillingError(Exception):
    """The service refused the request, or could not be reached (then `status` is None)."""

    code = "billing_error"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None,
                 status: int | None = None, request_id: str | None = None, idempotency_key: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}
        self.status = status
        self.request_id = request_id
        self.idempotency_key = idempotency_key
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status else ""
        return f"{self.code}{where}: {self.message}"


class NetworkError(BillingError):
    """No answer: the connection failed, dropped or timed out on every attempt. The request may have
    reached the service; repeating it with the same idempotency key is safe."""

    code = "network_error"


# one class per contract code; the class name is the code in CamelCase
class ValidationError(BillingError):
    code = "validation_error"


class Unauthorized(BillingError):
    code = "unauthorized"


class Forbidden(BillingError):
    code = "forbidden"


class NotFound(BillingError):
    code = "not_found"


class PriceNotFound(NotFound):
    code = "price_not_found"


class InsufficientBalance(BillingError):
    code = "insufficient_balance"


class ReservationExceeded(BillingError):
    code = "reservation_exceeded"


class BudgetExceeded(BillingError):
    code = "budget_exceeded"


class WalletBlocked(BillingError):
    code = "wallet_blocked"


class IdempotencyConflict(BillingError):
    code = "idempotency_conflict"


class ReservationClosed(BillingError):
    code = "reservation_closed"


class PeriodNotClosed(BillingError):
    code = "period_not_closed"


class PeriodNotStarted(BillingError):
    code = "period_not_started"


class ReservationExpired(BillingError):
    code = "reservation_expired"


class QuoteExpired(BillingError):
    code = "quote_expired"


class RefundExceeded(BillingError):
    code = "refund_exceeded"


class PayloadTooLarge(BillingError):
    code = "payload_too_large"


class InvalidSignature(BillingError):
    code = "invalid_signature"


class RateLimited(BillingError):
    code = "rate_limited"


class ConcurrencyLimit(BillingError):
    """Every call slot of the tenant's plan is taken (429): `details["limit"]`, `details["active"]`. Not
    retried: a slot frees only when a running call ends."""
    code = "concurrency_limit"


class InternalError(BillingError):
    code = "internal_error"


class Unavailable(BillingError):
    code = "unavailable"


ERROR_CLASSES: dict[str, type[BillingError]] = {
    cls.code: cls for cls in (
        ValidationError, Unauthorized, Forbidden, NotFound, PriceNotFound, InsufficientBalance,
        ReservationExceeded, BudgetExceeded, WalletBlocked, IdempotencyConflict, ReservationClosed,
        PeriodNotClosed, PeriodNotStarted, ReservationExpired, QuoteExpired, RefundExceeded, PayloadTooLarge,
        InvalidSignature, RateLimited, ConcurrencyLimit, InternalError, Unavailable,
    )
}

# the code to assume when an answer has no error envelope (e.g. a proxy's own 502 page)
CODE_BY_STATUS = {400: "validation_error", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                  409: "idempotency_conflict", 413: "payload_too_large", 429: "rate_limited",
                  500: "internal_error", 502: "unavailable", 503: "unavailable", 504: "unavailable"}


def error_for(status: int, body: Any, *, request_id: str | None = None, idempotency_key: str | None = None,
              retry_after: float | None = None) -> BillingError:
    """The exception for an error answer: by the envelope's code, else by the HTTP status."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code, message = error["code"], str(error.get("message") or error["code"])
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
    else:
        code = CODE_BY_STATUS.get(status, f"http_{status}")
        message, details = f"HTTP {status} without an error body", {}
    cls = ERROR_CLASSES.get(code, BillingError)
    return cls(message, code=code, details=details, status=status, request_id=request_id,
               idempotency_key=idempotency_key, retry_after=retry_after)
