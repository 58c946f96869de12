"""The Python client library (clients/python, package lad_billing) against the real stack: every method
once, the call() lifecycle, the batcher under concurrent producers, and retries through a faulty proxy
that prove a charge happens once."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import lad_billing
import pytest
from lad_billing import (
    AsyncBillingClient,
    BillingClient,
    ChargeEvent,
    ConcurrencyLimit,
    InsufficientBalance,
    Item,
    NotFound,
    RateLimited,
    ReservationExceeded,
    Unavailable,
    UsageBatcher,
    ValidationError,
)

from tests.support.fault_proxy import FaultProxy
from tests.support.helpers import assert_ledger_consistent
from tests.support.polling import eventually

STT = {"category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second"}


def stt(seconds: str) -> list[Item]:
    """seconds × 0.0001: 10000 seconds cost exactly 1."""
    return [Item(**STT, quantity=seconds)]


@pytest.fixture
def billing(live, tenant, make_token) -> Iterator[BillingClient]:
    # the token as a callable: a fresh one for every attempt
    with BillingClient(live.api.base_url, token=lambda: make_token(tenant, "billing.charge", "billing.view"),
                       backoff_base=0.05) as client:
        yield client


@pytest.fixture
def admin(live, tenant, make_token) -> Iterator[BillingClient]:
    with BillingClient(live.api.base_url, token=make_token(tenant, "billing.admin"), backoff_base=0.05) as client:
        yield client


@pytest.fixture
def proxy(live) -> Iterator[FaultProxy]:
    found = FaultProxy(live.api.base_url).start()
    yield found
    found.stop()


def test_every_method_once(billing, admin, tenant, live, make_token):
    credit = admin.top_up("10", description="client test", idempotency_key=f"topup-{uuid.uuid4()}")
    assert credit.transaction.type == "topup" and credit.transaction.amount == Decimal("10")
    assert credit.grant is not None and credit.grant.remaining == Decimal("10")

    wallet = billing.wallet()
    assert (wallet.current_balance, wallet.reserved_balance, wallet.available_balance) == (Decimal(10), 0, 10)
    assert isinstance(wallet.current_balance, Decimal) and wallet.tenant_id == tenant

    price = billing.price("stt", "openai", "whisper-1", "second")
    assert price.unit_price == Decimal("0.0001") and price.effective_from.tzinfo is not None
    assert any(p.model == "gpt-4" for p in billing.prices(category="llm_prompt"))

    quote = billing.quote([Item(**STT, quantity=60), {"category": "telephony", "provider": "twilio",
                                                     "model": "voice", "unit": "minute", "quantity": Decimal("1")}])
    assert quote.total_cost == Decimal("0.019") and quote.quote_id and len(quote.items) == 2
    assert quote.items[0].total_cost == Decimal("0.006")

    entitlement = billing.entitlement("voice-agent", Decimal("0.40"))
    assert entitlement.allowed and entitlement.available_balance == Decimal("10") and entitlement.reason is None

    charge = billing.charge("voice-agent", stt("10000"), external_reference_id="call-1", quote_id=quote.quote_id,
                            metadata={"callId": "call-1", "seconds": Decimal("45.5")})
    assert charge.usage_event.status == "charged" and charge.usage_event.total_cost == Decimal("1")
    assert charge.transaction is not None and charge.transaction.amount == Decimal("-1") and not charge.replayed
    again = billing.charge("voice-agent", stt("10000"), external_reference_id="call-1", quote_id=quote.quote_id,
                           metadata={"callId": "call-1", "seconds": Decimal("45.5")})
    assert again.usage_event.id != charge.usage_event.id  # no key given: a new key, a new charge

    pending = billing.charge("campaigns", stt("5000"), wait=False)
    assert pending.usage_event.status == "pending" and pending.transaction is None
    task = _settled(billing, pending.task_id)
    assert task.state == "charged" and task.transaction is not None and task.transaction.amount == Decimal("-0.5")

    results = billing.charges([ChargeEvent("campaigns", stt("10000"), idempotency_key=f"b-{uuid.uuid4()}"),
                               ChargeEvent("campaigns", [{**STT, "quantity": "-1"}])])
    assert [r.status for r in results] == ["accepted", "error"]
    assert results[1].error is not None and results[1].error.code == "validation_error"
    assert results[0].idempotency_key and results[1].idempotency_key
    _settled(billing, results[0].task_id)

    hold = billing.reserve("voice-agent", amount="2", ttl_seconds=600, external_reference_id="call-2")
    assert hold.status == "active" and hold.amount == Decimal("2")
    hold = billing.extend_reservation(hold.id, amount="0.5", ttl_seconds=900)
    assert hold.amount == Decimal("2.5")
    assert billing.reservation(hold.id).id == hold.id
    assert [r.id for r in billing.reservations(status="active").reservations] == [hold.id]
    assert billing.release_reservation(hold.id).status == "released"

    usage = billing.usage(feature_key="voice-agent", limit=1)
    assert usage.summary.total_events == 2 and usage.summary.by_feature["voice-agent"].cost == Decimal("2")
    assert len(usage.events) == 1 and usage.next_cursor
    detail = billing.usage_event(charge.usage_event.id)
    assert detail.items[0].unit_price == Decimal("0.0001") and detail.metadata["seconds"] == "45.5"
    page = billing.transactions(type="debit")
    assert sum(t.amount for t in page.transactions) == Decimal("-3.5")
    assert billing.invoices().invoices == []
    with pytest.raises(NotFound):
        billing.invoice(str(uuid.uuid4()))
    assert billing.wallet().current_balance == Decimal("6.5")
    assert_ledger_consistent(live.api, make_token, tenant)


def test_errors_are_typed_and_floats_are_refused(billing, admin):
    admin.top_up("1")
    with pytest.raises(InsufficientBalance) as refused:
        billing.charge("voice-agent", stt("20000"))
    assert refused.value.status == 402 and refused.value.code == "insufficient_balance"
    assert refused.value.details["usageEventId"] and refused.value.idempotency_key
    with pytest.raises(ValidationError) as invalid:
        billing.charge("voice-agent", [{**STT, "quantity": "-1"}])
    assert invalid.value.details["field"].startswith("items[0].quantity")
    with pytest.raises(TypeError):
        billing.charge("voice-agent", [{**STT, "quantity": 45.5}])
    with pytest.raises(lad_billing.Forbidden):
        billing.top_up("5")


def _settled(client: BillingClient, task_id: str | None) -> lad_billing.Task:
    assert task_id
    return eventually(lambda: client.task(task_id), 60, 0.1, what="the charge settled",
                      until=lambda task: task.state != "pending")


# --- call() ---------------------------------------------------------------------------------------

def test_call_settles_the_hold_with_the_calls_items(billing, admin):
    admin.top_up("10")
    with billing.call("voice-agent", hold="2.50", external_reference_id="call-42") as call:
        assert billing.wallet().available_balance == Decimal("7.5")
        charge = call.settle(stt("12000"))
    assert charge.usage_event.total_cost == Decimal("1.2") and charge.transaction is not None
    assert billing.reservation(call.reservation.id).status == "settled"
    wallet = billing.wallet()
    assert (wallet.current_balance, wallet.reserved_balance) == (Decimal("8.8"), Decimal(0))


def test_call_extends_then_settles_above_the_first_hold(billing, admin):
    admin.top_up("3")
    with billing.call("voice-agent", items=stt("10000"), ttl_seconds=60) as call:
        assert call.reservation.amount == Decimal("1")
        extended = call.extend(amount="1", ttl_seconds=900)
        assert extended.amount == Decimal("2") and extended.expires_at > call.reservation.created_at
        assert billing.wallet().available_balance == Decimal("1")
        call.settle(stt("18000"))
    assert billing.wallet().current_balance == Decimal("1.2")


def test_call_releases_the_hold_when_the_block_raises_or_does_not_settle(billing, admin, live):
    strict = live.api.request("PATCH", "/api/billing/wallet", admin._token, json={"settlementPolicy": "strict"})
    assert strict.status_code == 200  # a settlement past the balance is refused, as before calls settled in full
    admin.top_up("5")
    with pytest.raises(RuntimeError, match="the call failed"):
        with billing.call("voice-agent", hold="2") as failed:
            raise RuntimeError("the call failed")
    assert billing.reservation(failed.reservation.id).status == "released"
    with billing.call("voice-agent", hold="1") as unused:
        pass
    assert billing.reservation(unused.reservation.id).status == "released"
    # a refused settlement leaves the hold to be released too
    with pytest.raises(ReservationExceeded):
        with billing.call("voice-agent", hold="1") as refused:
            refused.settle(stt("100000"))
    assert billing.reservation(refused.reservation.id).status == "released"
    wallet = billing.wallet()
    assert (wallet.current_balance, wallet.reserved_balance) == (Decimal(5), Decimal(0))


def test_async_client_and_call(live, tenant, make_token, admin):
    admin.top_up("4")

    async def fresh_token() -> str:
        return make_token(tenant, "billing.charge", "billing.view")

    async def scenario() -> tuple[Decimal, str]:
        async with AsyncBillingClient(live.api.base_url, token=fresh_token) as client:
            charged = await client.charge("campaigns", stt("10000"))
            assert charged.transaction is not None
            async with client.call("voice-agent", hold="1") as call:
                await call.extend(amount="1")
                await call.settle(stt("15000"))
            with pytest.raises(RuntimeError):
                async with client.call("voice-agent", hold="1") as dropped:
                    raise RuntimeError("hang up")
            assert (await client.reservation(dropped.reservation.id)).status == "released"
            results = await client.charges([ChargeEvent("campaigns", stt("1000"))])
            assert results[0].status == "accepted"
            return (await client.wallet()).reserved_balance, (await client.quote(stt("10"))).quote_id

    reserved, quote_id = asyncio.run(scenario())
    assert reserved == Decimal(0) and quote_id


# --- the batcher ----------------------------------------------------------------------------------

def test_batcher_charges_every_event_of_concurrent_producers_once(billing, admin, live, tenant, make_token):
    admin.top_up("100")
    producers, per_producer = 8, 40
    futures: list[tuple[str, lad_billing.ChargeFuture]] = []
    lock = threading.Lock()

    with UsageBatcher(billing, max_events=50, max_interval=0.2, max_pending=64) as batcher:
        def produce(n: int) -> None:
            for i in range(per_producer):
                future = batcher.add("campaigns", stt("100"), external_reference_id=f"p{n}-{i}")
                with lock:
                    futures.append((f"p{n}-{i}", future))

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(producers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # leaving the block sent the rest
    results = [f.result(timeout=0) for _, f in futures]
    assert len(results) == producers * per_producer
    assert {r.status for r in results} == {"accepted"}
    assert len({r.usage_event_id for r in results}) == producers * per_producer
    for result in results:
        _settled(billing, result.task_id)
    total = Decimal("0.01") * producers * per_producer
    assert billing.wallet().current_balance == Decimal(100) - total
    assert billing.usage(feature_key="campaigns").summary.total_events == producers * per_producer

    # the same events again under their keys: replayed, never charged twice
    again = billing.charges([ChargeEvent("campaigns", stt("100"), idempotency_key=f.idempotency_key,
                                         external_reference_id=reference) for reference, f in futures[:5]])
    assert [r.status for r in again] == ["replayed"] * 5
    assert [r.usage_event_id for r in again] == [r.usage_event_id for r in results[:5]]
    assert billing.wallet().current_balance == Decimal(100) - total
    assert_ledger_consistent(live.api, make_token, tenant)


def test_batcher_sends_on_its_interval_and_on_flush(billing, admin):
    admin.top_up("1")
    with UsageBatcher(billing, max_events=1000, max_interval=0.1) as batcher:
        future = batcher.add("campaigns", stt("10"))
        assert future.result(timeout=30).status == "accepted"
    with UsageBatcher(billing, max_events=1000, max_interval=3600) as batcher:
        futures = [batcher.add("campaigns", stt("10")) for _ in range(3)]
        with pytest.raises(TypeError):  # refused to its producer, the others unharmed
            batcher.add("campaigns", [{**STT, "quantity": 0.5}])
        batcher.flush()
        assert all(f.done() for f in futures) and {f.result().status for f in futures} == {"accepted"}


# --- retries through a faulty proxy ---------------------------------------------------------------

def test_retries_through_dropped_connections_503_and_429_charge_once(proxy, live, tenant, make_token, admin):
    admin.top_up("10")
    token = make_token(tenant, "billing.charge", "billing.view")
    with BillingClient(proxy.url, token=token, backoff_base=0.05, max_retries=5) as client:
        proxy.plan({"path": "/charge", "action": "forward_then_drop"}, {"path": "/charge", "action": "503"},
                   {"path": "/charge", "action": "forward_then_503"}, {"path": "/charge", "action": "429"})
        started = time.monotonic()
        charge = client.charge("voice-agent", stt("10000"))
        assert time.monotonic() - started >= 1  # the 429's Retry-After was honoured
        attempts = proxy.requests("/charge")
        assert [a["action"] for a in attempts] == ["forward_then_drop", "503", "forward_then_503", "429", "pass"]
        assert len({a["idempotencyKey"] for a in attempts}) == 1 and attempts[0]["idempotencyKey"]
        assert attempts[0]["userAgent"].startswith(f"lad-billing-python/{lad_billing.__version__} httpx/")
        assert charge.replayed and charge.usage_event.status == "charged"
        assert client.usage().summary.total_events == 1
        assert client.wallet().current_balance == Decimal(9)

        # a batch whose answer was lost: every event keeps its key, so the retry replays them
        proxy.plan({"path": "/charges", "action": "forward_then_drop"}, {"path": "/charges", "action": "drop"})
        results = client.charges([ChargeEvent("campaigns", stt("10000")) for _ in range(3)])
        assert [r.status for r in results] == ["replayed"] * 3
        for result in results:
            _settled(client, result.task_id)
        assert client.usage().summary.total_events == 4
        assert client.wallet().current_balance == Decimal(6)

        # a hold whose answer was lost is held once
        proxy.plan({"path": "/reservations", "action": "forward_then_drop"})
        hold = client.reserve("voice-agent", amount="1")
        assert [r.id for r in client.reservations(status="active").reservations] == [hold.id]
        assert [a["method"] for a in proxy.requests("/reservations")] == ["POST", "POST", "GET"]
        client.release_reservation(hold.id)

        # other 4xx are never retried
        proxy.plan()
        with pytest.raises(ValidationError):
            client.charge("voice-agent", [{**STT, "quantity": "-1"}])
        assert len(proxy.requests("/charge")) == 1
    assert_ledger_consistent(live.api, make_token, tenant)


def test_retries_are_bounded_by_max_retries_and_the_deadline(proxy, tenant, make_token):
    token = make_token(tenant, "billing.charge", "billing.view")
    with BillingClient(proxy.url, token=token, backoff_base=0.01, max_retries=2) as client:
        proxy.plan(*[{"path": "/wallet", "action": "503"}] * 5)
        with pytest.raises(Unavailable):
            client.wallet()
        assert len(proxy.requests("/wallet")) == 3
    with BillingClient(proxy.url, token=token, max_retries=10, retry_deadline=0.5) as client:
        proxy.plan(*[{"path": "/wallet", "action": "429"}] * 5)
        with pytest.raises(RateLimited) as limited:
            client.wallet()  # Retry-After 1 s does not fit in a 0.5 s deadline
        assert limited.value.retry_after == 1 and len(proxy.requests("/wallet")) == 1


def test_batcher_through_a_lost_answer_charges_every_event_once(proxy, live, tenant, make_token, admin):
    admin.top_up("10")
    token = make_token(tenant, "billing.charge", "billing.view")
    with BillingClient(proxy.url, token=token, backoff_base=0.05) as client:
        proxy.plan({"path": "/charges", "action": "forward_then_drop"}, {"path": "/charges", "action": "503"})
        futures: list[lad_billing.ChargeFuture] = []
        with UsageBatcher(client, max_events=1000, max_interval=0.2) as batcher:
            def produce() -> None:
                for _ in range(10):
                    futures.append(batcher.add("campaigns", stt("1000")))

            threads = [threading.Thread(target=produce) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        results = [f.result(timeout=0) for f in futures]
        assert {r.status for r in results} <= {"accepted", "replayed"} and "replayed" in {r.status for r in results}
        for result in results:
            _settled(client, result.task_id)
        assert client.usage().summary.total_events == 30
        assert client.wallet().current_balance == Decimal("7")
    assert_ledger_consistent(live.api, make_token, tenant)


def test_an_admin_client_acts_for_a_tenant(live, tenant, make_token):
    with BillingClient(live.api.base_url, token=make_token("platform-ops", "billing.admin"), tenant_id=tenant) as ops:
        ops.top_up("3", description="goodwill")
        wallet = ops.wallet()
        assert (wallet.tenant_id, wallet.current_balance) == (tenant, Decimal(3))
        assert [t.type for t in ops.transactions().transactions] == ["topup"]


def test_calls_get_is_one_calls_statement_and_a_call_past_the_limit_is_concurrency_limit(billing, admin, live):
    admin.top_up("5")
    assert live.api.request("PATCH", "/api/billing/wallet", admin._token,
                            json={"maxConcurrentCalls": 1}).status_code == 200
    held = billing.reserve("voice-agent", amount="1", external_reference_id="py-call/1")
    with pytest.raises(ConcurrencyLimit) as refused:
        billing.reserve("voice-agent", amount="1")
    assert (refused.value.status, refused.value.details) == (429, {"limit": 1, "active": 1})
    billing.charge("voice-agent", stt("5000"), reservation_id=held.id)
    call = billing.calls.get("py-call/1")
    assert (call.external_reference_id, call.total_cost, call.ledger_total) == ("py-call/1", Decimal("0.5"),
                                                                                 Decimal("-0.5"))
    assert [(h.status, h.burst) for h in call.holds] == [("settled", False)]
    assert [c.category for c in call.components] == ["stt"] and call.provider_cost is None
    assert "providerCost" in admin.calls.get("py-call/1").raw  # the operator's view
    with pytest.raises(NotFound):
        billing.calls.get("no-such-call")

    async def from_async() -> lad_billing.CallStatement:
        async with AsyncBillingClient(live.api.base_url, token=admin._token) as client:
            return await client.calls.get("py-call/1")

    assert asyncio.run(from_async()).total_cost == Decimal("0.5")


def test_an_agency_client_manages_and_acts_for_its_sub_accounts(live, tenant, make_token):
    admin = make_token(tenant, "billing.admin")
    assert live.api.request("PATCH", "/api/billing/wallet", admin, json={"reseller": True}).status_code == 200
    manage = make_token(tenant, "billing.manage", "billing.view")
    with BillingClient(live.api.base_url, token=manage) as agency:
        sub = agency.create_sub_account("client-a", spend_cap=None)
        assert (sub.tenant_id, sub.funding, sub.spend_cap) == (f"{tenant}:client-a", "prepaid", None)
        funded = agency.create_sub_account("client-b", funding="agency", spend_cap=Decimal("12.5"))
        assert funded.spend_cap == Decimal("12.5")
        assert [s.tenant_id for s in agency.sub_accounts()] == [sub.tenant_id, funded.tenant_id]
        assert agency.sub_account(funded.tenant_id).funding == "agency"
        credit = agency.top_up_sub_account(sub.tenant_id, "4", idempotency_key="first", description="from the client")
        again = agency.top_up_sub_account(sub.tenant_id, "4", idempotency_key="first", description="from the client")
        assert credit.transaction.id == again.transaction.id and credit.transaction.amount == Decimal(4)
        with pytest.raises(ValidationError):
            agency.top_up_sub_account(funded.tenant_id, "1")
        with pytest.raises(NotFound):
            agency.sub_account(f"o-{uuid.uuid4().hex[:8]}:x")
    # acting for a sub-account: its wallet, its usage; the tree's methods stay the agency's own
    with BillingClient(live.api.base_url, token=manage, tenant_id=sub.tenant_id) as acting:
        assert acting.wallet().current_balance == Decimal(4)
        assert acting.usage().events == []
        assert [s.tenant_id for s in acting.sub_accounts()] == [sub.tenant_id, funded.tenant_id]
    with BillingClient(live.api.base_url, token=manage, tenant_id=f"o-{uuid.uuid4().hex[:8]}") as stranger:
        with pytest.raises(NotFound):
            stranger.wallet()


def test_an_async_agency_client_acts_for_its_sub_accounts(live, tenant, make_token):
    admin = make_token(tenant, "billing.admin")
    assert live.api.request("PATCH", "/api/billing/wallet", admin, json={"reseller": True}).status_code == 200
    manage = make_token(tenant, "billing.manage", "billing.view")

    async def run() -> None:
        async with AsyncBillingClient(live.api.base_url, token=manage) as agency:
            sub = await agency.create_sub_account("async-a")
            await agency.top_up_sub_account(sub.tenant_id, "1.5")
            assert [s.tenant_id for s in await agency.sub_accounts()] == [sub.tenant_id]
        async with AsyncBillingClient(live.api.base_url, token=manage, tenant_id=sub.tenant_id) as acting:
            assert (await acting.wallet()).current_balance == Decimal("1.5")

    asyncio.run(run())
