"""`AsyncBillingClient`: the same client for asyncio, and `AsyncCall`, its `async with` call lifecycle."""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import httpx

from . import models as m
from ._operations import ChargeEvent, Operation, Operations
from ._retry import Attempts, RetryPolicy
from .client import CLOSED, Amount, CallState, Items, base_headers, log
from .errors import BillingError


class AsyncBillingClient:
    """As `BillingClient`, with every method a coroutine; `token` may also be an async callable."""

    def __init__(self, base_url: str, *, token: str | Callable[[], str | Awaitable[str]], timeout: float = 30.0,
                 max_retries: int = 3, retry_deadline: float = 60.0, backoff_base: float = 0.5,
                 tenant_id: str | None = None, http_client: httpx.AsyncClient | None = None):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.retry = RetryPolicy(max_retries=max_retries, deadline=retry_deadline, backoff_base=backoff_base)
        self._ops = Operations(tenant_id)
        self._http = http_client or httpx.AsyncClient()
        self._owns_http = http_client is None

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncBillingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _token_now(self) -> str:
        if not callable(self._token):
            return self._token
        token = self._token()
        return await token if inspect.isawaitable(token) else token

    async def send(self, op: Operation) -> Any:
        attempts = Attempts(self.retry, op, self.timeout)
        content = op.content()
        while True:
            try:
                response = await self._http.request(op.method, self.base_url + op.path, params=op.params,
                                                    content=content, headers=base_headers(await self._token_now(), op),
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
            await asyncio.sleep(delay)

    async def price(self, category: str, provider: str, model: str, unit: str, *, at: str | None = None) -> m.Price:
        return await self.send(self._ops.price(category, provider, model, unit, at))

    async def prices(self, *, category: str | None = None, provider: str | None = None, model: str | None = None,
                     unit: str | None = None, at: str | None = None) -> list[m.Price]:
        return await self.send(self._ops.prices(category=category, provider=provider, model=model, unit=unit, at=at))

    async def quote(self, items: Items, *, ttl_seconds: int | None = None) -> m.Quote:
        return await self.send(self._ops.quote(items, ttl_seconds))

    async def wallet(self) -> m.Wallet:
        return await self.send(self._ops.wallet())

    async def entitlement(self, feature_key: str, estimated_cost: Amount = "0") -> m.Entitlement:
        return await self.send(self._ops.entitlement(feature_key, estimated_cost))

    async def top_up(self, amount: Amount, *, idempotency_key: str | None = None, description: str | None = None,
                     kind: str | None = None, expires_at: datetime | str | None = None,
                     priority: int | None = None) -> m.Credit:
        return await self.send(self._ops.top_up(amount, idempotency_key=idempotency_key, description=description,
                                                kind=kind, expires_at=expires_at, priority=priority))

    async def charge(self, feature_key: str, items: Items, *, idempotency_key: str | None = None,
                     external_reference_id: str | None = None, reservation_id: str | None = None,
                     quote_id: str | None = None, metadata: Mapping[str, Any] | None = None,
                     wait: bool | int = True) -> m.Charge:
        event = ChargeEvent(feature_key, list(items), idempotency_key, external_reference_id, reservation_id, quote_id,
                            metadata)
        return await self.send(self._ops.charge(event, wait))

    async def charges(self, events: Iterable[ChargeEvent]) -> list[m.BatchResult]:
        return await self.send(self._ops.charges(list(events)))

    async def task(self, task_id: str) -> m.Task:
        return await self.send(self._ops.task(task_id))

    async def reserve(self, feature_key: str, *, amount: Amount | None = None, items: Items | None = None,
                      quote_id: str | None = None, ttl_seconds: int | None = None,
                      idempotency_key: str | None = None, external_reference_id: str | None = None) -> m.Reservation:
        return await self.send(self._ops.reserve(feature_key, amount=amount, items=items, quote_id=quote_id,
                                                 ttl_seconds=ttl_seconds, idempotency_key=idempotency_key,
                                                 external_reference_id=external_reference_id))

    async def extend_reservation(self, reservation_id: str, *, amount: Amount | None = None,
                                 ttl_seconds: int | None = None, idempotency_key: str | None = None) -> m.Reservation:
        return await self.send(self._ops.extend(reservation_id, amount=amount, ttl_seconds=ttl_seconds,
                                                idempotency_key=idempotency_key))

    async def release_reservation(self, reservation_id: str, *, idempotency_key: str | None = None) -> m.Reservation:
        return await self.send(self._ops.release(reservation_id, idempotency_key))

    async def reservation(self, reservation_id: str) -> m.Reservation:
        return await self.send(self._ops.reservation(reservation_id))

    @property
    def calls(self) -> AsyncCalls:
        """Calls by their external reference: `await client.calls.get("call-1")`."""
        return AsyncCalls(self)

    async def reservations(self, *, status: str | None = None, limit: int | None = None,
                           cursor: str | None = None) -> m.ReservationPage:
        return await self.send(self._ops.reservations(status, limit, cursor))

    def call(self, feature_key: str, *, hold: Amount | None = None, items: Items | None = None,
             quote_id: str | None = None, ttl_seconds: int | None = None, external_reference_id: str | None = None,
             metadata: Mapping[str, Any] | None = None, idempotency_key: str | None = None) -> AsyncCall:
        """`async with client.call(...) as call:` — see `BillingClient.call`."""
        return AsyncCall(self, feature_key, hold=hold, items=items, quote_id=quote_id, ttl_seconds=ttl_seconds,
                         external_reference_id=external_reference_id, metadata=metadata,
                         idempotency_key=idempotency_key)

    async def usage(self, *, from_: str | None = None, to: str | None = None, feature_key: str | None = None,
                    status: str | None = None, limit: int | None = None, cursor: str | None = None) -> m.UsagePage:
        return await self.send(self._ops.usage(from_=from_, to=to, feature_key=feature_key, status=status,
                                               limit=limit, cursor=cursor))

    async def usage_event(self, usage_event_id: str) -> m.UsageEventDetail:
        return await self.send(self._ops.usage_event(usage_event_id))

    async def transactions(self, *, from_: str | None = None, to: str | None = None, type: str | None = None,
                           limit: int | None = None, cursor: str | None = None) -> m.TransactionPage:
        return await self.send(self._ops.transactions(from_=from_, to=to, type=type, limit=limit, cursor=cursor))

    async def invoices(self, *, from_: str | None = None, to: str | None = None, limit: int | None = None,
                       cursor: str | None = None) -> m.InvoicePage:
        return await self.send(self._ops.invoices(from_=from_, to=to, limit=limit, cursor=cursor))

    async def invoice(self, invoice_id: str) -> m.Invoice:
        return await self.send(self._ops.invoice(invoice_id))

    # --- an agency's sub-accounts -----------------------------------------------------------------
    # An agency's own tree (whatever `tenant_id` the client acts for). To act for one of its
    # sub-accounts (wallet, usage, invoices…), make a client with `tenant_id=` the sub-account's id.

    async def sub_accounts(self) -> list[m.SubAccount]:
        return await self.send(self._ops.sub_accounts())

    async def sub_account(self, tenant_id: str) -> m.SubAccount:
        return await self.send(self._ops.sub_account(tenant_id))

    async def create_sub_account(self, name: str, *, funding: str = "prepaid",
                           spend_cap: Amount | None = None) -> m.SubAccount:
        """billing.manage of an agency: the sub-account `<agencyId>:<name>`."""
        return await self.send(self._ops.create_sub_account(name, funding, spend_cap))

    async def top_up_sub_account(self, tenant_id: str, amount: Amount, *, idempotency_key: str | None = None,
                           description: str | None = None) -> m.Credit:
        """billing.manage of an agency: credit one of its prepaid sub-accounts (its own wallet does not move)."""
        return await self.send(self._ops.top_up_sub_account(tenant_id, amount, idempotency_key=idempotency_key,
                                                          description=description))


class AsyncCalls:
    def __init__(self, client: AsyncBillingClient):
        self._client = client

    async def get(self, external_reference_id: str) -> m.CallStatement:
        """The call's statement (see BillingClient.calls)."""
        return await self._client.send(self._client._ops.call_statement(external_reference_id))


class AsyncCall:
    """One call's hold for asyncio: see `BillingClient.call`."""

    def __init__(self, client: AsyncBillingClient, feature_key: str, **options: Any):
        self.client = client
        self.state = CallState(feature_key, **options)

    @property
    def reservation(self) -> m.Reservation | None:
        return self.state.reservation

    @property
    def charge(self) -> m.Charge | None:
        return self.state.charge

    async def __aenter__(self) -> AsyncCall:
        s = self.state
        s.reservation = await self.client.reserve(s.feature_key, amount=s.hold, items=s.items, quote_id=s.quote_id,
                                                  ttl_seconds=s.ttl_seconds, idempotency_key=f"{s.key}:hold",
                                                  external_reference_id=s.external_reference_id)
        return self

    async def extend(self, amount: Amount | None = None, ttl_seconds: int | None = None) -> m.Reservation:
        s = self.state
        s.reservation = await self.client.extend_reservation(s.reservation_id, amount=amount, ttl_seconds=ttl_seconds,
                                                             idempotency_key=s.next_extend_key())
        return s.reservation

    async def settle(self, items: Items, *, metadata: Mapping[str, Any] | None = None,
                     wait: bool | int = True) -> m.Charge:
        s = self.state
        try:
            charge = await self.client.charge(s.feature_key, items, idempotency_key=s.next_settle_key(),
                                              external_reference_id=s.external_reference_id,
                                              reservation_id=s.reservation_id, quote_id=s.quote_id,
                                              metadata=metadata if metadata is not None else s.metadata, wait=wait)
        except BillingError as exc:
            s.settle_failed(exc)
            raise
        return s.settled(charge)

    async def release(self) -> m.Reservation | None:
        s = self.state
        try:
            s.reservation = await self.client.release_reservation(s.reservation_id, idempotency_key=f"{s.key}:release")
        except CLOSED:
            pass
        s.released = True
        return s.reservation

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if not self.state.must_release():
            return
        try:
            await self.release()
        except BillingError:
            if exc is None:
                raise
            log.warning("could not release hold %s after an error", self.state.reservation_id, exc_info=True)
