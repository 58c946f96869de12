"""`BillingClient`: the synchronous client, and `Call`, the hold → extend → settle lifecycle of one call."""
from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import httpx

from . import models as m
from ._operations import ChargeEvent, Item, Operation, Operations, new_idempotency_key
from ._retry import Attempts, RetryPolicy
from ._version import __version__
from .errors import BillingError, NetworkError, ReservationClosed, ReservationExpired

log = logging.getLogger("lad_billing")

USER_AGENT = f"lad-billing-python/{__version__} httpx/{httpx.__version__} python/{platform.python_version()}"

Items = Iterable[Item | Mapping[str, Any]]
Amount = Any  # Decimal, int or a decimal string; never a float


def base_headers(token: str, op: Operation) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT, "Accept": "application/json"}
    if op.body is not None:
        headers["Content-Type"] = "application/json"
    if op.idempotency_key:
        headers["Idempotency-Key"] = op.idempotency_key
    return {**headers, **op.headers}


class BillingClient:
    """A client of LAD Billing. `token` is a bearer token, or a callable returning a fresh one (called
    before every attempt). Mutating requests always carry an idempotency key (generated when none is
    given, the same on every retry); network errors, 408, 429 (after its Retry-After) and 5xx are retried
    with exponential backoff and full jitter, at most `max_retries` times within `retry_deadline` seconds.
    `tenant_id` is for a billing.admin token acting for a tenant."""

    def __init__(self, base_url: str, *, token: str | Callable[[], str], timeout: float = 30.0, max_retries: int = 3,
                 retry_deadline: float = 60.0, backoff_base: float = 0.5, tenant_id: str | None = None,
                 http_client: httpx.Client | None = None):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries, deadline=retry_deadline, backoff_base=backoff_base)
        self._ops = Operations(tenant_id)
        self._http = http_client or httpx.Client()
        self._owns_http = http_client is None

    # --- plumbing ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> BillingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _token_now(self) -> str:
        return self._token() if callable(self._token) else self._token

    def send(self, op: Operation) -> Any:
        attempts = Attempts(self.retry, op, self.timeout)
        content = op.content()
        while True:
            try:
                response = self._http.request(op.method, self.base_url + op.path, params=op.params, content=content,
                                              headers=base_headers(self._token_now(), op),
                                              timeout=attempts.attempt_timeout())
            except httpx.TransportError as exc:
                error = attempts.network_error(exc)
            else:
                done, value = attempts.outcome(response)
                if done:
                    return value
                error = value
            delay = attempts.wait_before_next(error)
            log.info("retrying %s %s in %.2fs after %s", op.method, op.path, delay, error.code)
            time.sleep(delay)

    # --- pricing and quotes -----------------------------------------------------------------------

    def price(self, category: str, provider: str, model: str, unit: str, *, at: str | None = None) -> m.Price:
        return self.send(self._ops.price(category, provider, model, unit, at))

    def prices(self, *, category: str | None = None, provider: str | None = None, model: str | None = None,
               unit: str | None = None, at: str | None = None) -> list[m.Price]:
        return self.send(self._ops.prices(category=category, provider=provider, model=model, unit=unit, at=at))

    def quote(self, items: Items, *, ttl_seconds: int | None = None) -> m.Quote:
        """Price items; the quote binds for charges and holds naming `quote_id` until `expires_at`."""
        return self.send(self._ops.quote(items, ttl_seconds))

    # --- wallet and credits -----------------------------------------------------------------------

    def wallet(self) -> m.Wallet:
        return self.send(self._ops.wallet())

    def entitlement(self, feature_key: str, estimated_cost: Amount = "0") -> m.Entitlement:
        return self.send(self._ops.entitlement(feature_key, estimated_cost))

    def top_up(self, amount: Amount, *, idempotency_key: str | None = None, description: str | None = None,
               kind: str | None = None, expires_at: datetime | str | None = None,
               priority: int | None = None) -> m.Credit:
        """billing.admin: add a credit grant."""
        return self.send(self._ops.top_up(amount, idempotency_key=idempotency_key, description=description, kind=kind,
                                          expires_at=expires_at, priority=priority))

    # --- charging ---------------------------------------------------------------------------------

    def charge(self, feature_key: str, items: Items, *, idempotency_key: str | None = None,
               external_reference_id: str | None = None, reservation_id: str | None = None,
               quote_id: str | None = None, metadata: Mapping[str, Any] | None = None,
               wait: bool | int = True, occurred_at: Any = None) -> m.Charge:
        """Record and charge usage. `wait=True` waits for the outcome (the server's default, 10 s), an int
        waits that many seconds, False answers at once; a charge still pending has no `transaction`.
        A refusal (InsufficientBalance, BudgetExceeded, …) is raised. `occurred_at` (a datetime or ISO 8601
        string): when the usage happened, for a record sent late; it is priced and budgeted then."""
        event = ChargeEvent(feature_key, list(items), idempotency_key, external_reference_id, reservation_id, quote_id,
                            metadata, occurred_at)
        return self.send(self._ops.charge(event, wait))

    def charges(self, events: Iterable[ChargeEvent]) -> list[m.BatchResult]:
        """Submit up to 1,000 charges in one request; each has its own outcome (and its own key)."""
        return self.send(self._ops.charges(list(events)))

    def task(self, task_id: str) -> m.Task:
        return self.send(self._ops.task(task_id))

    # --- holds ------------------------------------------------------------------------------------

    def reserve(self, feature_key: str, *, amount: Amount | None = None, items: Items | None = None,
                quote_id: str | None = None, ttl_seconds: int | None = None, idempotency_key: str | None = None,
                external_reference_id: str | None = None) -> m.Reservation:
        return self.send(self._ops.reserve(feature_key, amount=amount, items=items, quote_id=quote_id,
                                           ttl_seconds=ttl_seconds, idempotency_key=idempotency_key,
                                           external_reference_id=external_reference_id))

    def extend_reservation(self, reservation_id: str, *, amount: Amount | None = None, ttl_seconds: int | None = None,
                           idempotency_key: str | None = None) -> m.Reservation:
        return self.send(self._ops.extend(reservation_id, amount=amount, ttl_seconds=ttl_seconds,
                                          idempotency_key=idempotency_key))

    def release_reservation(self, reservation_id: str, *, idempotency_key: str | None = None) -> m.Reservation:
        return self.send(self._ops.release(reservation_id, idempotency_key))

    def reservation(self, reservation_id: str) -> m.Reservation:
        return self.send(self._ops.reservation(reservation_id))

    def reservations(self, *, status: str | None = None, limit: int | None = None,
                     cursor: str | None = None) -> m.ReservationPage:
        return self.send(self._ops.reservations(status, limit, cursor))

    @property
    def calls(self) -> Calls:
        """Calls by their external reference: `client.calls.get("call-1")` is one call's statement."""
        return Calls(self)

    def call(self, feature_key: str, *, hold: Amount | None = None, items: Items | None = None,
             quote_id: str | None = None, ttl_seconds: int | None = None, external_reference_id: str | None = None,
             metadata: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> Call:
        """A context manager around one call: holds `hold` (or what `items` cost) on entry; inside,
        `.extend(...)` and `.settle(items)`; releases the hold when the block ends without settling or
        raises."""
        return Call(self, feature_key, hold=hold, items=items, quote_id=quote_id, ttl_seconds=ttl_seconds,
                    external_reference_id=external_reference_id, metadata=metadata, idempotency_key=idempotency_key)

    # --- history ----------------------------------------------------------------------------------

    def usage(self, *, from_: str | None = None, to: str | None = None, feature_key: str | None = None,
              status: str | None = None, limit: int | None = None, cursor: str | None = None) -> m.UsagePage:
        return self.send(self._ops.usage(from_=from_, to=to, feature_key=feature_key, status=status, limit=limit,
                                         cursor=cursor))

    def usage_event(self, usage_event_id: str) -> m.UsageEventDetail:
        return self.send(self._ops.usage_event(usage_event_id))

    def transactions(self, *, from_: str | None = None, to: str | None = None, type: str | None = None,
                     limit: int | None = None, cursor: str | None = None) -> m.TransactionPage:
        return self.send(self._ops.transactions(from_=from_, to=to, type=type, limit=limit, cursor=cursor))

    def invoices(self, *, from_: str | None = None, to: str | None = None, limit: int | None = None,
                 cursor: str | None = None) -> m.InvoicePage:
        return self.send(self._ops.invoices(from_=from_, to=to, limit=limit, cursor=cursor))

    def invoice(self, invoice_id: str) -> m.Invoice:
        return self.send(self._ops.invoice(invoice_id))

    # --- an agency's sub-accounts -----------------------------------------------------------------
    # An agency's own tree (whatever `tenant_id` the client acts for). To act for one of its
    # sub-accounts (wallet, usage, invoices…), make a client with `tenant_id=` the sub-account's id.

    def sub_accounts(self) -> list[m.SubAccount]:
        return self.send(self._ops.sub_accounts())

    def sub_account(self, tenant_id: str) -> m.SubAccount:
        return self.send(self._ops.sub_account(tenant_id))

    def create_sub_account(self, name: str, *, funding: str = "prepaid",
                           spend_cap: Amount | None = None) -> m.SubAccount:
        """billing.manage of an agency: the sub-account `<agencyId>:<name>`."""
        return self.send(self._ops.create_sub_account(name, funding, spend_cap))

    def top_up_sub_account(self, tenant_id: str, amount: Amount, *, idempotency_key: str | None = None,
                           description: str | None = None) -> m.Credit:
        """billing.manage of an agency: credit one of its prepaid sub-accounts (its own wallet does not move)."""
        return self.send(self._ops.top_up_sub_account(tenant_id, amount, idempotency_key=idempotency_key,
                                                          description=description))


# codes after which a hold is already closed: nothing is left to give back
CLOSED = (ReservationClosed, ReservationExpired)


class Calls:
    def __init__(self, client: BillingClient):
        self._client = client

    def get(self, external_reference_id: str) -> m.CallStatement:
        """The call's holds, extensions, charges, items by component and ledger entries (billing.view);
        NotFound for an unknown reference or another tenant's."""
        return self._client.send(self._client._ops.call_statement(external_reference_id))


class CallState:
    """What one call's lifecycle has done so far, and the idempotency keys of its steps (derived from
    one key, so a process that retries a whole step reuses them)."""

    def __init__(self, feature_key: str, hold: Amount | None, items: Items | None, quote_id: str | None,
                 ttl_seconds: int | None, external_reference_id: str | None, metadata: Mapping[str, Any] | None,
                 idempotency_key: str | None):
        self.feature_key, self.hold, self.items, self.quote_id = feature_key, hold, items, quote_id
        self.ttl_seconds, self.external_reference_id, self.metadata = ttl_seconds, external_reference_id, metadata
        self.key = idempotency_key or new_idempotency_key("call")
        self.reservation: m.Reservation | None = None
        self.charge: m.Charge | None = None
        self.released = False
        # a settlement whose answer never came may still settle the hold: then it must not be released
        self.settle_unknown = False
        self.extensions = 0
        self.settlements = 0

    @property
    def reservation_id(self) -> str:
        if self.reservation is None:
            raise RuntimeError("the call holds nothing yet: use it inside its `with` block")
        return self.reservation.id

    def next_extend_key(self) -> str:
        self.extensions += 1
        return f"{self.key}:extend:{self.extensions}"

    def next_settle_key(self) -> str:
        if self.charge is not None:
            raise RuntimeError("this call is settled already")
        # a refused settlement replays its refusal under its key, so a second try needs a new one
        self.settlements += 1
        return f"{self.key}:settle:{self.settlements}"

    def settled(self, charge: m.Charge) -> m.Charge:
        self.charge = charge
        return charge

    def settle_failed(self, exc: BillingError) -> None:
        if isinstance(exc, NetworkError):
            self.settle_unknown = True

    def must_release(self) -> bool:
        return self.reservation is not None and self.charge is None and not self.released and not self.settle_unknown


class Call:
    """One call's hold: see `BillingClient.call`."""

    def __init__(self, client: BillingClient, feature_key: str, **options: Any):
        self.client = client
        self.state = CallState(feature_key, **options)

    @property
    def reservation(self) -> m.Reservation | None:
        return self.state.reservation

    @property
    def charge(self) -> m.Charge | None:
        return self.state.charge

    def __enter__(self) -> Call:
        s = self.state
        s.reservation = self.client.reserve(s.feature_key, amount=s.hold, items=s.items, quote_id=s.quote_id,
                                            ttl_seconds=s.ttl_seconds, idempotency_key=f"{s.key}:hold",
                                            external_reference_id=s.external_reference_id)
        return self

    def extend(self, amount: Amount | None = None, ttl_seconds: int | None = None) -> m.Reservation:
        """Hold `amount` more and/or keep the hold `ttl_seconds` from now."""
        s = self.state
        s.reservation = self.client.extend_reservation(s.reservation_id, amount=amount, ttl_seconds=ttl_seconds,
                                                       idempotency_key=s.next_extend_key())
        return s.reservation

    def settle(self, items: Items, *, metadata: Mapping[str, Any] | None = None, wait: bool | int = True) -> m.Charge:
        """Charge what the call used against the hold; the rest of the hold is released."""
        s = self.state
        try:
            charge = self.client.charge(s.feature_key, items, idempotency_key=s.next_settle_key(),
                                        external_reference_id=s.external_reference_id, reservation_id=s.reservation_id,
                                        quote_id=s.quote_id, metadata=metadata if metadata is not None else s.metadata,
                                        wait=wait)
        except BillingError as exc:
            s.settle_failed(exc)
            raise
        return s.settled(charge)

    def release(self) -> m.Reservation | None:
        s = self.state
        try:
            s.reservation = self.client.release_reservation(s.reservation_id, idempotency_key=f"{s.key}:release")
        except CLOSED:
            pass
        s.released = True
        return s.reservation

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if not self.state.must_release():
            return
        try:
            self.release()
        except BillingError:
            if exc is None:
                raise
            # the block's own error matters more; the hold expires at its TTL anyway
            log.warning("could not release hold %s after an error", self.state.reservation_id, exc_info=True)
