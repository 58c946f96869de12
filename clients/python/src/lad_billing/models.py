"""Typed answers of LAD Billing, decoded from its JSON: amounts are `Decimal`, times `datetime`.

Each model is a frozen dataclass whose field `some_name` reads the JSON property `someName`; fields
the service adds later are ignored here and kept in `.raw`. `describe()` tells which properties a
model reads and with what type, so a contract test can check them against `/openapi.json`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from functools import cache
from typing import Any, Literal, TypeVar

M = TypeVar("M", bound="Model")


@dataclass(frozen=True, kw_only=True)
class Model:
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata={"json": None})

    @classmethod
    def from_json(cls: type[M], data: dict[str, Any]) -> M:
        return _decode(cls, data)


def camel(name: str) -> str:
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part.title() for part in rest)


# --- the answers ----------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Price(Model):
    category: str
    provider: str
    model: str
    unit: str
    unit_price: Decimal | None  # None for package and graduated prices (their terms are in .raw)
    currency: str
    description: str | None
    scope: Literal["global", "tenant"]
    effective_from: datetime
    effective_to: datetime | None


@dataclass(frozen=True, kw_only=True)
class QuoteLine(Model):
    category: str
    provider: str
    model: str
    unit: str
    quantity: Decimal
    unit_price: Decimal | None  # None for package and graduated items (the breakdown is in .raw)
    total_cost: Decimal


@dataclass(frozen=True, kw_only=True)
class Quote(Model):
    quote_id: str
    expires_at: datetime
    total_cost: Decimal
    currency: str
    items: list[QuoteLine]


@dataclass(frozen=True, kw_only=True)
class Grant(Model):
    id: str
    kind: Literal["paid", "promotional", "debt"]
    amount: Decimal
    remaining: Decimal
    priority: int
    expires_at: datetime | None
    source: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class Wallet(Model):
    id: str
    tenant_id: str
    current_balance: Decimal
    reserved_balance: Decimal
    available_balance: Decimal
    overdraft_limit: Decimal
    currency: str
    status: Literal["active", "blocked"]
    flagged: bool
    flag_reason: str | None
    grants: list[Grant]


@dataclass(frozen=True, kw_only=True)
class Transaction(Model):
    """A ledger entry. `type` is a string: the service may add entry types."""
    id: str
    type: str
    amount: Decimal
    balance_before: Decimal
    balance_after: Decimal
    reserved_change: Decimal
    description: str | None
    usage_event_id: str | None
    reservation_id: str | None
    grant_id: str | None
    related_transaction_id: str | None
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class SubAccount(Model):
    """An agency's sub-account: `tenant_id` is `<agencyId>:<name>`; `prepaid` has its own wallet,
    `agency` is billed to the agency up to `spend_cap` a month (at resale prices)."""
    tenant_id: str
    funding: Literal["prepaid", "agency"]
    spend_cap: Decimal | None
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class Credit(Model):
    """A top-up: its ledger entry and the credit grant it created."""
    transaction: Transaction
    grant: Grant | None = None


@dataclass(frozen=True, kw_only=True)
class Rejection(Model):
    code: str
    message: str | None
    details: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class UsageEvent(Model):
    id: str
    feature_key: str
    status: Literal["pending", "charged", "rejected"]
    total_cost: Decimal | None
    currency: str
    external_reference_id: str | None
    created_at: datetime
    charged_at: datetime | None
    rejection: Rejection | None = None
    occurred_at: datetime | None = None  # when the usage happened (createdAt unless sent late)


@dataclass(frozen=True, kw_only=True)
class Charge(Model):
    """A charge's outcome. While it is still `pending` (the wait ran out, or `wait=False`), there is
    no `transaction` yet: `task(task_id)` tells the outcome later."""
    task_id: str
    usage_event: UsageEvent
    transaction: Transaction | None = None
    replayed: bool = field(default=False, metadata={"json": None})


@dataclass(frozen=True, kw_only=True)
class ChargeAccepted(Model):
    """The 202 answer of POST /charge."""
    task_id: str
    usage_event: UsageEvent


@dataclass(frozen=True, kw_only=True)
class ErrorInfo(Model):
    code: str
    message: str
    details: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class BatchResult(Model):
    """One event's outcome in POST /charges: `accepted`, `replayed` (its key was used before with the
    same request) or `error`. `idempotency_key` is the event's key, given or generated."""
    index: int
    status: Literal["accepted", "replayed", "error"]
    task_id: str | None
    usage_event_id: str | None
    error: ErrorInfo | None
    idempotency_key: str | None = field(default=None, metadata={"json": None})


@dataclass(frozen=True, kw_only=True)
class Task(Model):
    id: str
    state: Literal["pending", "charged", "rejected"]
    usage_event: UsageEvent
    transaction: Transaction | None = None
    error: Rejection | None = None


@dataclass(frozen=True, kw_only=True)
class Reservation(Model):
    id: str
    status: Literal["active", "settled", "released", "expired"]
    amount: Decimal
    settled_amount: Decimal | None
    feature_key: str
    external_reference_id: str | None
    quote_id: str | None
    usage_event_id: str | None
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None
    burst: bool = False  # admitted above the plan's base limit: settled at its burst multiplier


@dataclass(frozen=True, kw_only=True)
class ReservationPage(Model):
    reservations: list[Reservation]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class CallHold(Model):
    id: str
    status: Literal["active", "settled", "released", "expired"]
    amount: Decimal
    settled_amount: Decimal | None
    burst: bool
    feature_key: str
    created_at: datetime
    closed_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class CallEvent(Model):
    id: str
    status: Literal["pending", "charged", "rejected"]
    total_cost: Decimal | None
    feature_key: str
    reservation_id: str | None
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class CallComponent(Model):
    """One category's items of the call's charged events; `provider_cost` for billing.admin only."""
    category: str
    quantity: Decimal
    billed_quantity: Decimal
    cost: Decimal
    burst: bool
    provider_cost: Decimal | None = None


@dataclass(frozen=True, kw_only=True)
class CallItem(Model):
    usage_event_id: str
    category: str
    provider: str
    model: str
    unit: str
    quantity: Decimal
    billed_quantity: Decimal
    unit_price: Decimal | None
    cost: Decimal
    burst: bool
    burst_multiplier: Decimal | None
    provider_cost: Decimal | None = None


@dataclass(frozen=True, kw_only=True)
class CallStatement(Model):
    """One call (GET /calls/<externalReferenceId>): `ledger_total` is the sum of `entries` (a debit is
    negative); `provider_cost` and `margin` for billing.admin only."""
    external_reference_id: str
    holds: list[CallHold]
    events: list[CallEvent]
    components: list[CallComponent]
    items: list[CallItem]
    entries: list[Transaction]
    total_cost: Decimal
    ledger_total: Decimal
    provider_cost: Decimal | None = None
    margin: Decimal | None = None


@dataclass(frozen=True, kw_only=True)
class Entitlement(Model):
    allowed: bool
    available_balance: Decimal
    reason: str | None


@dataclass(frozen=True, kw_only=True)
class UsageBucket(Model):
    events: int
    cost: Decimal


@dataclass(frozen=True, kw_only=True)
class UsageSummary(Model):
    total_events: int
    total_cost: Decimal
    by_feature: dict[str, UsageBucket]
    by_status: dict[str, UsageBucket]


@dataclass(frozen=True, kw_only=True)
class UsagePage(Model):
    events: list[UsageEvent]
    summary: UsageSummary
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class UsageItem(Model):
    category: str
    provider: str
    model: str
    unit: str
    quantity: Decimal
    unit_price: Decimal | None
    total_cost: Decimal | None


@dataclass(frozen=True, kw_only=True)
class UsageEventDetail(UsageEvent):
    metadata: dict[str, Any]
    items: list[UsageItem]
    task_id: str
    transaction_id: str | None


@dataclass(frozen=True, kw_only=True)
class TransactionPage(Model):
    transactions: list[Transaction]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class InvoiceLine(Model):
    line_number: int
    feature_key: str
    category: str
    provider: str
    model: str
    unit: str
    quantity: Decimal
    unit_price: Decimal | None
    amount: Decimal
    exact_amount: Decimal


@dataclass(frozen=True, kw_only=True)
class InvoiceSummary(Model):
    id: str | None
    tenant_id: str
    period: str
    status: Literal["draft", "finalized"]
    currency: str
    period_start: datetime
    period_end: datetime
    opening_balance: Decimal
    closing_balance: Decimal
    total_usage: Decimal
    total_credits: Decimal
    finalized_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class Invoice(InvoiceSummary):
    lines: list[InvoiceLine]


@dataclass(frozen=True, kw_only=True)
class InvoicePage(Model):
    invoices: list[InvoiceSummary]
    next_cursor: str | None


# --- decoding -------------------------------------------------------------------------------------

def _fields(cls: type) -> list[tuple[str, str, Any, bool]]:
    """(python name, json name, type, has default) for every field read from JSON."""
    return _fields_cached(cls)


@cache
def _fields_cached(cls: type) -> list[tuple[str, str, Any, bool]]:
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        json_name = f.metadata.get("json", camel(f.name))
        if json_name is None:
            continue
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        found.append((f.name, json_name, hints[f.name], has_default))
    return found


def _optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _convert(tp: Any, value: Any) -> Any:
    tp, nullable = _optional(tp)
    if value is None:
        if nullable or tp is Any:
            return None
        raise ValueError("unexpected null")
    origin = typing.get_origin(tp)
    if tp is Decimal:
        return Decimal(str(value)) if not isinstance(value, Decimal) else value
    if tp is datetime:
        return parse_time(value)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_convert(item, v) for v in value]
    if origin is dict:
        _, item = typing.get_args(tp)
        return {k: _convert(item, v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode(tp, value)
    return value  # str, int, bool, Literal, Any


def _decode(cls: type[M], data: dict[str, Any]) -> M:
    values: dict[str, Any] = {"raw": data}
    for name, json_name, tp, has_default in _fields(cls):
        if json_name in data:
            try:
                values[name] = _convert(tp, data[json_name])
            except (ValueError, TypeError, KeyError, ArithmeticError, AttributeError) as exc:
                raise ValueError(f"{cls.__name__}.{json_name}: {exc}") from exc
        elif not has_default:
            if _optional(tp)[1]:
                values[name] = None
            else:
                raise ValueError(f"{cls.__name__}: the answer lacks {json_name}")
    return cls(**values)


# --- what the models read, for the contract test --------------------------------------------------

def describe(tp: Any) -> dict[str, Any]:
    """The JSON type a model (or field type) reads, in the form the contract test checks against the
    OpenAPI document: kind (object, array, map, decimal, timestamp, string, integer, boolean, json),
    nullable, and for objects the fields with `optional` (may be absent)."""
    tp, nullable = _optional(tp)
    origin = typing.get_origin(tp)
    spec: dict[str, Any]
    if tp is Decimal:
        spec = {"kind": "decimal"}
    elif tp is datetime:
        spec = {"kind": "timestamp"}
    elif tp is str:
        spec = {"kind": "string"}
    elif tp is bool:
        spec = {"kind": "boolean"}
    elif tp is int:
        spec = {"kind": "integer"}
    elif origin is Literal:
        spec = {"kind": "string", "enum": list(typing.get_args(tp))}
    elif origin is list:
        spec = {"kind": "array", "items": describe(typing.get_args(tp)[0])}
    elif origin is dict:
        item = typing.get_args(tp)[1]
        spec = {"kind": "json"} if item is Any else {"kind": "map", "values": describe(item)}
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        spec = {"kind": "object", "name": tp.__name__, "fields": {
            json_name: {**describe(ftp), "optional": has_default} for _, json_name, ftp, has_default in _fields(tp)
        }}
    else:
        raise TypeError(f"cannot describe {tp!r}")
    spec["nullable"] = nullable
    return spec
