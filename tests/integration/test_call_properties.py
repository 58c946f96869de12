"""Property-based test of calls against a real PostgreSQL database (issue 19).

A hypothesis state machine drives one fresh tenant per run, with a call plan (base limit, burst limit
and multiplier, a grace limit), through random sequences of holds, extensions, settlements (below,
at and far above the hold and the balance), releases, expiries (the clock moved past a hold's TTL,
then the expiry job) and top-ups, each in its own unit of work as the web layer and the worker do, and bursts of hold
requests sent at once from threads (each in its own transaction, as simultaneous HTTP requests are).
Refusals (BillingError) are expected outcomes; any other exception fails the run.

After every step: active holds never exceed the burst limit; the balance never passes
-callGraceLimit; the ledger verifies (balance = entries = grants, reserved = active holds). After a
step: a hold asked for while the wallet is in debt is refused with reason in_debt, one asked for with
every slot taken is refused with concurrency_limit; a hold above the base limit is a burst hold, one
within it is not; a settlement is refused only past the grace, and a burst settlement costs the
multiple of its items.
"""
from __future__ import annotations

import itertools
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import text

from billing_core.calls import plans
from billing_core.calls.commands import CallPlanRequest
from billing_core.db import UnitOfWork
from billing_core.errors import BillingError
from billing_core.ledger import credits, expiry, verification
from billing_core.ledger.commands import TopUpRequest
from billing_core.lifecycle import holds
from billing_core.lifecycle.commands import ExtendReservationRequest, ReleaseReservationRequest, ReservationRequest
from billing_core.usage import charging, events
from billing_core.usage.commands import ChargeRequest
from tests.support.helpers import stt_items

BASE, BURST, MULTIPLIER, GRACE = 3, 4, Decimal(2), Decimal(5)
amounts = st.sampled_from(["0.1", "0.5", "1", "2.5"])
seconds = st.sampled_from(["0", "1000", "5000", "20000", "60000"])  # 0 .. 6 at 0.0001 a second


class CallMachine(RuleBasedStateMachine):
    engine: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.tenant = f"calls-{uuid.uuid4().hex[:12]}"
        self.serial = itertools.count()
        self.opened: list[uuid.UUID] = []  # every hold admitted, in order
        note(f"tenant {self.tenant}")
        with UnitOfWork(self.engine) as uow:
            plans.set_plan(uow, self.tenant, CallPlanRequest(maxConcurrentCalls=BASE, burstLimit=BURST,
                                                             burstMultiplier=MULTIPLIER, callGraceLimit=GRACE))

    def key(self, what: str) -> str:
        return f"{what}-{next(self.serial)}"

    def attempt(self, operation: Any, *, quiet: bool = False) -> tuple[Any, BillingError | None]:
        """Run `operation(uow)` in its own unit of work: (result, None), or (None, the refusal).
        `quiet` in threads, where hypothesis takes no notes."""
        try:
            with UnitOfWork(self.engine) as uow:
                return operation(uow), None
        except BillingError as refusal:
            if not quiet:
                note(f"refused: {refusal.code} {refusal.details}")
            return None, refusal

    def read(self, sql: str) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(text(sql), {"t": self.tenant}).one()

    def balance(self) -> Decimal:
        return self.read("SELECT coalesce((SELECT current_balance FROM wallets WHERE tenant_id = :t), 0)")[0]

    def active(self) -> int:
        return self.read("SELECT count(*) FROM reservations WHERE tenant_id = :t AND status = 'active'")[0]

    def hold(self, index: int) -> uuid.UUID:
        return self.opened[index % len(self.opened)]

    # --- rules ---------------------------------------------------------------------------------

    @rule(amount=amounts)
    def top_up(self, amount: str) -> None:
        command = TopUpRequest(amount=amount, idempotencyKey=self.key("topup"))
        _, refused = self.attempt(lambda uow: credits.top_up(uow, self.tenant, command, created_by="prop"))
        assert refused is None

    @rule(amount=amounts)
    def reserve(self, amount: str) -> None:
        in_debt, active = self.balance() < 0, self.active()
        command = ReservationRequest(featureKey="voice", amount=amount, ttlSeconds=600, idempotencyKey=self.key("h"))
        result, refused = self.attempt(lambda uow: holds.reserve(uow, self.tenant, command, created_by="prop"))
        if in_debt:
            assert refused is not None and refused.details.get("reason") == "in_debt", refused
        elif refused is None:
            self.opened.append(result.hold.id)
            assert result.hold.burst == (active >= BASE), (active, result.hold)
            assert result.concurrency.active <= BURST
        elif refused.code == "concurrency_limit":
            assert refused.details == {"limit": BURST, "active": BURST}

    @rule(count=st.integers(2, 8), amount=amounts)
    def simultaneous_holds(self, count: int, amount: str) -> None:
        """`count` hold requests at once, each in its own transaction and thread: together they take at
        most the free slots (exactly those, when the wallet can pay and is not in debt)."""
        free, in_debt = BURST - self.active(), self.balance() < 0
        commands = [ReservationRequest(featureKey="voice", amount=amount, ttlSeconds=600, idempotencyKey=self.key("s"))
                    for _ in range(count)]
        with ThreadPoolExecutor(max_workers=count) as pool:
            answers = list(pool.map(lambda c: self.attempt(
                lambda uow: holds.reserve(uow, self.tenant, c, created_by="prop"), quiet=True), commands))
        note(f"simultaneous: {[r.code if r else 'ok' for _, r in answers]}")
        admitted = [result.hold for result, refused in answers if refused is None]
        self.opened += [h.id for h in admitted]
        assert len(admitted) <= free and not (in_debt and admitted), (free, len(admitted))
        if not in_debt and all(r is None or r.code == "concurrency_limit" for _, r in answers):
            assert len(admitted) == min(free, count), (free, count, [r for _, r in answers])

    @precondition(lambda self: self.opened)
    @rule(index=st.integers(0, 50), amount=amounts)
    def extend(self, index: int, amount: str) -> None:
        command = ExtendReservationRequest(amount=amount, idempotencyKey=self.key("x"))
        self.attempt(lambda uow: holds.extend(uow, self.tenant, self.hold(index), command, created_by="prop"))

    @precondition(lambda self: self.opened)
    @rule(index=st.integers(0, 50), spoken=seconds)
    def settle(self, index: int, spoken: str) -> None:
        reservation_id = self.hold(index)
        command = ChargeRequest.model_validate({"featureKey": "voice", "idempotencyKey": self.key("c"),
                                                "items": stt_items(spoken), "reservationId": str(reservation_id)})
        accepted, refused = self.attempt(lambda uow: events.accept_charge(uow, self.tenant, command, user_id="prop"))
        if refused is not None:
            return
        before = self.read(
            "SELECT r.status, r.amount, r.burst_multiplier, w.current_balance - w.reserved_balance AS available "
            f"FROM reservations r JOIN wallets w USING (tenant_id) WHERE r.tenant_id = :t AND r.id = '{reservation_id}'")
        outcome, _ = self.attempt(lambda uow: charging.charge_usage_event(uow, self.tenant, accepted.event.id))
        cost = Decimal(spoken) * Decimal("0.0001") * (MULTIPLIER if before.burst_multiplier is not None else 1)
        if outcome.event.status == "charged":
            assert outcome.event.total_cost == cost, (outcome.event.total_cost, cost)
        elif outcome.event.rejection_code == "reservation_exceeded":  # only past the grace
            assert before.status == "active" and cost > before.available + before.amount + GRACE, (before, cost)

    @precondition(lambda self: self.opened)
    @rule(index=st.integers(0, 50))
    def release(self, index: int) -> None:
        command = ReleaseReservationRequest(idempotencyKey=self.key("r"))
        self.attempt(lambda uow: holds.release(uow, self.tenant, self.hold(index), command, created_by="prop"))

    @precondition(lambda self: self.opened)
    @rule(index=st.integers(0, 50))
    def expire(self, index: int) -> None:
        """The hold's TTL passes (its expires_at moved into the past), then the expiry job runs."""
        with self.engine.begin() as connection:
            connection.execute(text("UPDATE reservations SET expires_at = now() - interval '1 second' "
                                    "WHERE tenant_id = :t AND id = :id AND status = 'active'"),
                               {"t": self.tenant, "id": self.hold(index)})
        with UnitOfWork(self.engine) as uow:
            expiry.expire_due(uow, self.tenant)

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def within_the_plan(self) -> None:
        assert self.active() <= BURST
        assert self.balance() >= -GRACE, self.balance()
        with UnitOfWork(self.engine) as uow:
            checked = verification.verify(uow, self.tenant)
        assert checked.ok, checked.mismatches


def test_calls_keep_their_limits_and_the_books(engine):
    """CALL_PROPERTY_EXAMPLES / CALL_PROPERTY_STEPS for a deeper hunt."""
    CallMachine.engine = engine
    run_state_machine_as_test(CallMachine, settings=settings(
        max_examples=int(os.environ.get("CALL_PROPERTY_EXAMPLES", "20")),
        stateful_step_count=int(os.environ.get("CALL_PROPERTY_STEPS", "25")), deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
