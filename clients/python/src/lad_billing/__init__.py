"""LAD Billing client: `BillingClient` / `AsyncBillingClient`, `call()` around a call, `UsageBatcher`."""
from ._operations import ChargeEvent, Item
from ._version import __version__
from .async_client import AsyncBillingClient, AsyncCall
from .batcher import ChargeFuture, UsageBatcher
from .client import BillingClient, Call
from .errors import (
    BillingError,
    BudgetExceeded,
    ConcurrencyLimit,
    Forbidden,
    IdempotencyConflict,
    InsufficientBalance,
    InternalError,
    InvalidSignature,
    NetworkError,
    NotFound,
    PayloadTooLarge,
    PeriodNotClosed,
    PeriodNotStarted,
    PriceNotFound,
    QuoteExpired,
    RateLimited,
    RefundExceeded,
    ReservationClosed,
    ReservationExceeded,
    ReservationExpired,
    Unauthorized,
    Unavailable,
    ValidationError,
    WalletBlocked,
)
from .models import (
    BatchResult,
    CallStatement,
    Charge,
    Credit,
    Entitlement,
    Grant,
    Invoice,
    InvoicePage,
    Price,
    Quote,
    Reservation,
    ReservationPage,
    SubAccount,
    Task,
    Transaction,
    TransactionPage,
    UsageEvent,
    UsageEventDetail,
    UsagePage,
    Wallet,
)

__all__ = [
    "__version__", "AsyncBillingClient", "AsyncCall", "BillingClient", "Call", "ChargeEvent", "ChargeFuture", "Item",
    "UsageBatcher",
    "BillingError", "BudgetExceeded", "Forbidden", "IdempotencyConflict", "InsufficientBalance", "InternalError",
    "InvalidSignature", "NetworkError", "NotFound", "PayloadTooLarge", "PeriodNotClosed", "PeriodNotStarted",
    "ConcurrencyLimit", "PriceNotFound", "QuoteExpired", "RateLimited", "RefundExceeded", "ReservationClosed",
    "ReservationExceeded", "ReservationExpired", "Unauthorized", "Unavailable", "ValidationError", "WalletBlocked",
    "BatchResult", "Charge", "Credit", "Entitlement", "Grant", "Invoice", "InvoicePage", "Price", "Quote",
    "CallStatement", "Reservation", "ReservationPage", "SubAccount", "Task", "Transaction", "TransactionPage", "UsageEvent",
    "UsageEventDetail", "UsagePage", "Wallet",
]
