"""The billing API under /api/billing, one module per domain (routes, request and response models and
their representations together); `routing` holds the blueprint they all join."""
from web.api import (  # noqa: F401
    access,
    agencies,
    calls,
    catalog,
    corrections,
    documents,
    exports,
    invoicing,
    ledger,
    lifecycle,
    notifications,
    payments,
    usage,
)
from web.api.routing import billing

__all__ = ["billing"]
