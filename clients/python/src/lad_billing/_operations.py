"""The requests the clients send and how their answers are read; shared by the sync and async clients,
which only differ in how they wait."""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from . import models as m

API = "/api/billing"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def new_idempotency_key(kind: str = "req") -> str:
    return f"lad-py-{kind}-{uuid.uuid4()}"


@dataclass(frozen=True)
class Read:
    """An answer the client reads: `model` at `pointer` of the body of `method path` with `status`.
    The contract test checks every Read against /openapi.json."""
    method: str
    path: str
    status: int
    pointer: tuple[str, ...]
    model: Any


READS: list[Read] = []


def read(method: str, path: str, status: int, pointer: tuple[str, ...], model: Any) -> Read:
    found = Read(method, path, status, pointer, model)
    READS.append(found)
    return found


# one of the two is present: `price` when all four keys are given, else `prices`
PRICE = read("GET", "/pricing", 200, ("price",), m.Price | None)
PRICES = read("GET", "/pricing", 200, ("prices",), list[m.Price] | None)
QUOTE = read("POST", "/quote", 200, ("quote",), m.Quote)
WALLET = read("GET", "/wallet", 200, ("wallet",), m.Wallet)
TOP_UP = read("POST", "/topup", 200, (), m.Credit)
CHARGE = read("POST", "/charge", 200, (), m.Charge)
CHARGE_ACCEPTED = read("POST", "/charge", 202, (), m.ChargeAccepted)
CHARGES = read("POST", "/charges", 202, ("results",), list[m.BatchResult])
TASK = read("GET", "/tasks/{task_id}", 200, ("task",), m.Task)
ENTITLEMENT = read("GET", "/entitlement", 200, ("entitlement",), m.Entitlement)
RESERVE = read("POST", "/reservations", 200, ("reservation",), m.Reservation)
EXTEND = read("POST", "/reservations/{reservation_id}/extend", 200, ("reservation",), m.Reservation)
RELEASE = read("POST", "/reservations/{reservation_id}/release", 200, ("reservation",), m.Reservation)
RESERVATION = read("GET", "/reservations/{reservation_id}", 200, ("reservation",), m.Reservation)
RESERVATIONS = read("GET", "/reservations", 200, (), m.ReservationPage)
USAGE = read("GET", "/usage", 200, ("usage",), m.UsagePage)
CALL = read("GET", "/calls/{external_reference_id}", 200, ("call",), m.CallStatement)
USAGE_EVENT = read("GET", "/usage/{usage_event_id}", 200, ("usageEvent",), m.UsageEventDetail)
TRANSACTIONS = read("GET", "/transactions", 200, (), m.TransactionPage)
INVOICES = read("GET", "/invoices", 200, (), m.InvoicePage)
INVOICE = read("GET", "/invoices/{invoice_id}", 200, ("invoice",), m.Invoice)
SUB_ACCOUNTS = read("GET", "/sub-accounts", 200, ("subAccounts",), list[m.SubAccount])
SUB_ACCOUNT = read("GET", "/sub-accounts/{tenant_id}", 200, ("subAccount",), m.SubAccount)
CREATE_SUB_ACCOUNT = read("POST", "/sub-accounts", 201, ("subAccount",), m.SubAccount)
SUB_ACCOUNT_TOP_UP = read("POST", "/sub-accounts/{tenant_id}/topups", 200, (), m.Credit)
ERROR = read("POST", "/charge", 402, ("error",), m.ErrorInfo)


@dataclass
class Operation:
    """One request, ready to send (and to send again, unchanged, on a retry)."""
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    idempotency_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    decode: Callable[[int, Any, Mapping[str, str]], Any] = lambda status, body, headers: body
    timeout: float | None = None  # at least this long per attempt (a charge that waits for its outcome)

    def content(self) -> bytes | None:
        return None if self.body is None else json.dumps(self.body, separators=(",", ":")).encode()


def decoder(found: Read) -> Callable[[int, Any, Mapping[str, str]], Any]:
    def decode(status: int, body: Any, headers: Mapping[str, str]) -> Any:
        for key in found.pointer:
            body = body[key]
        return m._convert(found.model, body)

    return decode


# --- encoding what the caller gives ---------------------------------------------------------------

def decimal_text(value: Any, what: str) -> str | int:
    """An amount or quantity for the wire: Decimal, int or a decimal string; a float is refused, as
    it cannot hold most decimal amounts exactly."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{what} must be a Decimal, int or decimal string, not {type(value).__name__}")
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | str):
        return value
    raise TypeError(f"{what} must be a Decimal, int or decimal string, not {type(value).__name__}")


@dataclass(frozen=True)
class Item:
    """A usage item: what was used, how much. Plain dicts with the same keys work too."""
    category: str
    provider: str
    model: str
    unit: str
    quantity: Decimal | int | str


def encode_items(items: Iterable[Item | Mapping[str, Any]]) -> list[dict[str, Any]]:
    encoded = []
    for index, item in enumerate(items):
        data = dict(item.__dict__) if isinstance(item, Item) else dict(item)
        if "quantity" in data:
            data["quantity"] = decimal_text(data["quantity"], f"items[{index}].quantity")
        encoded.append(data)
    return encoded


def plain(value: Any) -> Any:
    """Metadata and other JSON values: Decimal as a decimal string, datetimes as ISO 8601."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def compact(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class ChargeEvent:
    """One charge of a batch (`charges()`, `UsageBatcher`): the body of a POST /charge."""
    feature_key: str
    items: list[Item | Mapping[str, Any]]
    idempotency_key: str | None = None
    external_reference_id: str | None = None
    reservation_id: str | None = None
    quote_id: str | None = None
    metadata: Mapping[str, Any] | None = None
    # when the usage happened, for a record sent late (a datetime, or an ISO 8601 string)
    occurred_at: Any = None

    def body(self, idempotency_key: str) -> dict[str, Any]:
        occurred = self.occurred_at.isoformat() if hasattr(self.occurred_at, "isoformat") else self.occurred_at
        return compact(featureKey=self.feature_key, items=encode_items(self.items), idempotencyKey=idempotency_key,
                       externalReferenceId=self.external_reference_id, reservationId=self.reservation_id,
                       quoteId=self.quote_id, metadata=plain(self.metadata) if self.metadata is not None else None,
                       occurredAt=occurred)


# --- the operations -------------------------------------------------------------------------------

class Operations:
    """Builds each endpoint's Operation; `tenant_id` (for a billing.admin token) names the tenant."""

    def __init__(self, tenant_id: str | None = None):
        self.tenant_id = tenant_id

    def _op(self, method: str, path: str, found: Read | None, *, params: dict[str, Any] | None = None,
            body: dict[str, Any] | None = None, idempotency_key: str | None = None, kind: str = "req",
            own: bool = False) -> Operation:
        """`own`: the caller's own resource (an agency's tree), never another tenant's."""
        params = compact(**(params or {}))
        if self.tenant_id and not own:
            if method == "GET":
                params["tenantId"] = self.tenant_id
            else:
                body = {**(body or {}), "tenantId": self.tenant_id}
        if method in MUTATING and idempotency_key is None:
            idempotency_key = new_idempotency_key(kind)
        return Operation(method, API + path, params=params, body=body, idempotency_key=idempotency_key,
                         decode=decoder(found) if found else Operation.decode)

    def price(self, category: str, provider: str, model: str, unit: str, at: str | None = None) -> Operation:
        return self._op("GET", "/pricing", PRICE,
                        params={"category": category, "provider": provider, "model": model, "unit": unit, "at": at})

    def prices(self, **filters: str | None) -> Operation:
        return self._op("GET", "/pricing", PRICES, params=filters)

    def quote(self, items: Iterable[Item | Mapping[str, Any]], ttl_seconds: int | None) -> Operation:
        # a quote moves no money; its key only makes a retried request return the same quote
        return self._op("POST", "/quote", QUOTE, body=compact(items=encode_items(items), ttlSeconds=ttl_seconds))

    def wallet(self) -> Operation:
        return self._op("GET", "/wallet", WALLET)

    def top_up(self, amount: Any, *, idempotency_key: str | None, description: str | None, kind: str | None,
               expires_at: datetime | str | None, priority: int | None) -> Operation:
        key = idempotency_key or new_idempotency_key("topup")
        body = compact(amount=decimal_text(amount, "amount"), idempotencyKey=key, description=description, kind=kind,
                       expiresAt=plain(expires_at), priority=priority)
        return self._op("POST", "/topup", TOP_UP, body=body, idempotency_key=key)

    def charge(self, event: ChargeEvent, wait: bool | int) -> Operation:
        key = event.idempotency_key or new_idempotency_key("charge")
        op = self._op("POST", "/charge", None, body=event.body(key), idempotency_key=key)
        if wait is False:
            op.headers["Prefer"] = "respond-async"
        elif wait is not True:
            op.params["wait"] = int(wait)
        seconds = 10 if wait is True else (0 if wait is False else int(wait))
        op.timeout = seconds + 10.0
        charged, accepted = decoder(CHARGE), decoder(CHARGE_ACCEPTED)

        def decode(status: int, body: Any, headers: Mapping[str, str]) -> m.Charge:
            replayed = headers.get("idempotent-replayed") == "true"
            if status == 202:
                pending: m.ChargeAccepted = accepted(status, body, headers)
                return m.Charge(task_id=pending.task_id, usage_event=pending.usage_event, raw=body, replayed=replayed)
            result: m.Charge = charged(status, body, headers)
            return m.Charge(task_id=result.task_id, usage_event=result.usage_event, transaction=result.transaction,
                            raw=body, replayed=replayed)

        op.decode = decode
        return op

    def charges(self, events: Iterable[ChargeEvent]) -> Operation:
        # every event keeps its own key, the same on every retry of the batch
        keys = [e.idempotency_key or new_idempotency_key("charge") for e in events]
        bodies = [e.body(k) for e, k in zip(events, keys, strict=True)]
        op = self._op("POST", "/charges", None, body={"events": bodies})
        op.idempotency_key = None  # the batch itself has none: each event carries its own
        results = decoder(CHARGES)

        def decode(status: int, body: Any, headers: Mapping[str, str]) -> list[m.BatchResult]:
            found: list[m.BatchResult] = results(status, body, headers)
            return [m.BatchResult(index=r.index, status=r.status, task_id=r.task_id, usage_event_id=r.usage_event_id,
                                  error=r.error, raw=r.raw, idempotency_key=keys[r.index]) for r in found]

        op.decode = decode
        return op

    def task(self, task_id: str) -> Operation:
        return self._op("GET", f"/tasks/{task_id}", TASK)

    def entitlement(self, feature_key: str, estimated_cost: Any) -> Operation:
        return self._op("GET", "/entitlement", ENTITLEMENT, params={
            "featureKey": feature_key, "estimatedCost": decimal_text(estimated_cost, "estimated_cost")})

    def reserve(self, feature_key: str, *, amount: Any, items: Iterable[Item | Mapping[str, Any]] | None,
                quote_id: str | None, ttl_seconds: int | None, idempotency_key: str | None,
                external_reference_id: str | None) -> Operation:
        body = compact(featureKey=feature_key, amount=None if amount is None else decimal_text(amount, "amount"),
                       items=None if items is None else encode_items(items), quoteId=quote_id, ttlSeconds=ttl_seconds,
                       externalReferenceId=external_reference_id)
        return self._op("POST", "/reservations", RESERVE, body=body, idempotency_key=idempotency_key, kind="hold")

    def extend(self, reservation_id: str, *, amount: Any, ttl_seconds: int | None,
               idempotency_key: str | None) -> Operation:
        body = compact(amount=None if amount is None else decimal_text(amount, "amount"), ttlSeconds=ttl_seconds)
        return self._op("POST", f"/reservations/{reservation_id}/extend", EXTEND, body=body,
                        idempotency_key=idempotency_key, kind="extend")

    def release(self, reservation_id: str, idempotency_key: str | None) -> Operation:
        return self._op("POST", f"/reservations/{reservation_id}/release", RELEASE, body={},
                        idempotency_key=idempotency_key, kind="release")

    def call_statement(self, external_reference_id: str) -> Operation:
        return self._op("GET", f"/calls/{quote(external_reference_id, safe='')}", CALL)

    def reservation(self, reservation_id: str) -> Operation:
        return self._op("GET", f"/reservations/{reservation_id}", RESERVATION)

    def reservations(self, status: str | None, limit: int | None, cursor: str | None) -> Operation:
        return self._op("GET", "/reservations", RESERVATIONS, params={"status": status, "limit": limit, "cursor": cursor})

    def usage(self, *, from_: str | None, to: str | None, feature_key: str | None, status: str | None,
              limit: int | None, cursor: str | None) -> Operation:
        return self._op("GET", "/usage", USAGE, params={"from": from_, "to": to, "featureKey": feature_key,
                                                        "status": status, "limit": limit, "cursor": cursor})

    def usage_event(self, usage_event_id: str) -> Operation:
        return self._op("GET", f"/usage/{usage_event_id}", USAGE_EVENT)

    def transactions(self, *, from_: str | None, to: str | None, type: str | None, limit: int | None,
                     cursor: str | None) -> Operation:
        return self._op("GET", "/transactions", TRANSACTIONS,
                        params={"from": from_, "to": to, "type": type, "limit": limit, "cursor": cursor})

    def invoices(self, *, from_: str | None, to: str | None, limit: int | None, cursor: str | None) -> Operation:
        return self._op("GET", "/invoices", INVOICES, params={"from": from_, "to": to, "limit": limit, "cursor": cursor})

    def invoice(self, invoice_id: str) -> Operation:
        return self._op("GET", f"/invoices/{invoice_id}", INVOICE)

    # --- an agency's sub-accounts (always the calling agency's own: `tenant_id` does not apply) ---------

    def sub_accounts(self) -> Operation:
        return self._op("GET", "/sub-accounts", SUB_ACCOUNTS, own=True)

    def sub_account(self, tenant_id: str) -> Operation:
        return self._op("GET", f"/sub-accounts/{quote(tenant_id, safe=':')}", SUB_ACCOUNT, own=True)

    def create_sub_account(self, name: str, funding: str, spend_cap: Any) -> Operation:
        body = compact(name=name, funding=funding,
                       spendCap=None if spend_cap is None else decimal_text(spend_cap, "spend_cap"))
        return self._op("POST", "/sub-accounts", CREATE_SUB_ACCOUNT, body=body, own=True)

    def top_up_sub_account(self, tenant_id: str, amount: Any, *, idempotency_key: str | None,
                           description: str | None) -> Operation:
        key = idempotency_key or new_idempotency_key("topup")
        body = compact(amount=decimal_text(amount, "amount"), idempotencyKey=key, description=description)
        return self._op("POST", f"/sub-accounts/{quote(tenant_id, safe=':')}/topups", SUB_ACCOUNT_TOP_UP, body=body,
                        idempotency_key=key, own=True)
