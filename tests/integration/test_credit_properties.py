"""Property-based test of the credit lifecycle against a real PostgreSQL database.

A hypothesis state machine drives one fresh tenant per run through random sequences of top-ups
(paid or promotional, expiring or not, any priority), grants expiring, holds (reserve, extend,
release, expire), charges with and without a hold (below, at and above it, twice on one hold, a
hold expiring under a pending charge), refunds (partial and full), adjustments (both signs), the
overdraft, a blocked spell, and replays of requests with their idempotency key. It calls
billing_core in-process, each operation in its own UnitOfWork as the web layer and the worker do.
Refusals (BillingError) are expected outcomes; any other exception fails the run.

After every step, from one REPEATABLE READ snapshot:
- ledger.verify is ok; balance = sum(ledger amount) = sum(grant remaining) = sum(grant draws);
- reserved = sum(active holds) = sum(ledger reserved_change), and per hold: its amount while active,
  zero once closed;
- available = balance - reserved, and balance - reserved + overdraft >= 0 (no clawback here);
- each grant's remaining is within [0, amount] (the one debt grant is <= 0) and is what its draws
  add up to; debt and credits never coexist; each entry's draws add up to its amount;
- a settled hold has exactly one debit, for its settled amount and its usage event; others none;
- each charged usage event has exactly one debit for its cost, others none, none left pending;
- the refunds of a debit never add up to more than it took, and refunds name a debit.
After particular steps: right after the expiry job nothing is due (overdue credits <= reserved);
entitlement's answer is what reserve, extend and a charge then do, and what GET /wallet's reading
(expiry.end_due_and_read_wallet) shows; a refund never credits a grant past its expiry; a hold settles once;
a charge made before its hold expired settles it, one made after is refused; a replay changes
nothing.

Simulated time: a grant or hold "expires" by moving its expires_at into the past (credit_grants and
reservations are not append-only), then the expiry job's function runs. No beat runs here; in
production it may run the same job at any moment, which changes nothing the checks rely on; where an
outcome would depend on whether it ran first, the step holds the wallet lock. Rules choose holds and grants by the order
they were made in (not by their random ids), so that hypothesis can replay and shrink a run.
"""
from __future__ import annotations

import itertools
import os
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text

from billing_core import money
from billing_core.calls import plans
from billing_core.calls.commands import CallPlanRequest
from billing_core.db import UnitOfWork
from billing_core.errors import BillingError
from billing_core.ledger import credits, expiry, verification, wallets
from billing_core.ledger.commands import AdjustmentRequest, RefundRequest, TopUpRequest
from billing_core.lifecycle import entitlement, holds
from billing_core.lifecycle.commands import ExtendReservationRequest, ReleaseReservationRequest, ReservationRequest
from billing_core.usage import charging, events
from billing_core.usage.commands import ChargeRequest
from tests.support.helpers import stt_items

ZERO = Decimal(0)
TICK = Decimal("0.0001")  # the price of one STT second: every amount here is a whole number of ticks
FEATURES = ("call", "campaign")


def ticks(n: int) -> Decimal:
    return Decimal(n) * TICK


def text_amount(value: Decimal) -> str:
    return money.format_decimal(value)


# amounts from one tick to 30 credits, shrinking towards small round ones
amounts = st.one_of(st.integers(1, 10).map(lambda n: Decimal(n)), st.integers(1, 300_000).map(ticks))
# How much to ask for, given what there is (what may be spent, held or refunded now): a share of
# it, exactly it give or take a tick (where the boundaries are), or an amount regardless of it.
sizes = st.one_of(
    st.tuples(st.just("share"), st.integers(1, 10)),
    st.tuples(st.just("edge"), st.sampled_from([-1, 0, 1])),
    st.tuples(st.just("any"), amounts),
)


def sized(size: tuple[str, Any], there: Decimal) -> Decimal:
    """The amount `size` asks for (zero or less: nothing to ask for), a whole number of ticks."""
    how, value = size
    if how == "share":
        return (max(there, ZERO) * value / 10 / TICK).to_integral_value() * TICK
    if how == "edge":
        return there + value * TICK
    return value


priorities = st.one_of(st.sampled_from([0, 50, 100]), st.integers(0, 100))
expiry_days = st.sampled_from([None, 1, 2, 30])


class CreditMachine(RuleBasedStateMachine):
    expiring_grants = Bundle("expiring_grants")  # grants made with an expiry
    holds = Bundle("holds")
    debits = Bundle("debits")  # ledger entry ids of charged usage

    engine: Any = None  # set by the test
    totals: Counter[str] = Counter()  # outcomes over all runs, printed by the test (pytest -s)

    def __init__(self) -> None:
        super().__init__()
        self.tenant = f"prop-{uuid.uuid4().hex[:12]}"
        self.serial = itertools.count()
        self.outcomes: Counter[str] = Counter()
        # successful requests that may be sent again with the same key: (operation, command)
        self.sent: list[tuple[str, Any]] = []
        self.hold_numbers: dict[uuid.UUID, int] = {}  # the order holds and grants were made in
        self.grant_numbers: dict[uuid.UUID, int] = {}
        note(f"tenant {self.tenant}")
        # settlements past the hold and the balance are refused (the `strict` policy): this machine
        # checks spendable >= 0; calls settled into debt (`grace`) are test_call_properties.py's
        with UnitOfWork(self.engine) as uow:
            plans.set_plan(uow, self.tenant, CallPlanRequest(settlementPolicy="strict"))

    # --- plumbing ------------------------------------------------------------------------------

    def key(self, what: str) -> str:
        return f"{what}-{next(self.serial)}"

    def attempt(self, name: str, operation) -> Any:  # noqa: ANN001
        """Run `operation(uow)` in its own unit of work; a BillingError is a refusal (None)."""
        try:
            with UnitOfWork(self.engine) as uow:
                result = operation(uow)
        except BillingError as refusal:
            self.outcomes[f"{name}:{refusal.code}"] += 1
            note(f"{name} refused: {refusal.code} {refusal.message}")
            return None
        self.outcomes[f"{name}:ok"] += 1
        return result

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return connection.execute(text(sql), {"tenant": self.tenant, **params}).all()

    def one(self, sql: str, **params: Any) -> Any:
        rows = self.rows(sql, **params)
        return rows[0] if rows else None

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(sql), {"tenant": self.tenant, **params})

    def wallet_now(self) -> Any:
        return self.one("SELECT current_balance, reserved_balance, overdraft_limit, status FROM wallets "
                        "WHERE tenant_id = :tenant")

    def spendable(self) -> Decimal:
        wallet = self.wallet_now()
        if wallet is None:
            return ZERO
        return wallet.current_balance - wallet.reserved_balance + wallet.overdraft_limit

    def charge_command(self, cost: Decimal, feature: str, reservation_id: uuid.UUID | None = None) -> ChargeRequest:
        seconds = cost / TICK
        assert seconds == seconds.to_integral_value(), cost
        return ChargeRequest.model_validate({
            "featureKey": feature, "idempotencyKey": self.key("charge"), "items": stt_items(str(int(seconds))),
            "reservationId": str(reservation_id) if reservation_id else None})

    def accept(self, command: ChargeRequest) -> events.ChargeOutcome | None:
        return self.attempt("accept", lambda uow: events.accept_charge(uow, self.tenant, command, user_id="prop"))

    def charge_batch(self) -> list[charging.Settled]:
        with UnitOfWork(self.engine) as uow:
            return charging.charge_pending_batch(uow, self.tenant, 500)

    def event_status(self, event_id: uuid.UUID) -> Any:
        return self.one("SELECT status, rejection_code, total_cost FROM usage_events "
                        "WHERE tenant_id = :tenant AND id = :id", id=event_id)

    def expire_due(self) -> None:
        with UnitOfWork(self.engine) as uow:
            expiry.expire_due(uow, self.tenant)
        self.check_expired_as_far_as_possible()

    def check_expired_as_far_as_possible(self) -> None:
        """Right after the expiry job: no hold is past its TTL, and what is left of grants past
        their expiry only backs holds (it cannot be more than the reserved balance)."""
        with self.snapshot() as connection:
            row = connection.execute(text("""
                SELECT w.reserved_balance,
                       coalesce((SELECT sum(remaining) FROM credit_grants WHERE tenant_id = w.tenant_id
                                 AND kind <> 'debt' AND remaining > 0 AND expires_at <= now()), 0) AS overdue,
                       (SELECT count(*) FROM reservations WHERE tenant_id = w.tenant_id AND status = 'active'
                        AND expires_at <= now()) AS due_holds
                FROM wallets w WHERE w.tenant_id = :tenant"""), {"tenant": self.tenant}).one_or_none()
        if row is None:
            return
        assert row.due_holds == 0, row
        assert row.overdue <= row.reserved_balance, row

    def snapshot(self):  # noqa: ANN201 - a connection inside one REPEATABLE READ transaction
        return _Snapshot(self.engine)

    def did(self, what: str) -> None:
        self.outcomes[what] += 1

    def hold(self, hold_id: uuid.UUID, only_active: bool) -> Any:
        """The hold as it stands; with `only_active`, an active one instead of a closed one, if any."""
        row = self.one("SELECT id, feature_key, amount, status FROM reservations WHERE tenant_id = :tenant "
                       "AND id = :id", id=hold_id)
        if only_active and row.status != "active":
            active = self.active_holds()
            if not active:  # a new hold on half of what may be spent, if anything may
                self.reserve(("share", 5), row.feature_key)
                active = self.active_holds()
            # chosen by the order the holds were made in, so that a replay of the run chooses the same
            row = active[self.hold_numbers[hold_id] % len(active)] if active else None
        self.did(f"hold:{row.status if row else 'none'}")
        return row

    def active_holds(self) -> list[Any]:
        return self.rows("SELECT id, feature_key, amount, status FROM reservations WHERE tenant_id = :tenant "
                         "AND status = 'active' AND expires_at > now() ORDER BY created_at, id")

    def entitled(self, feature: str, amount: Decimal) -> bool:
        """What entitlement answers for this cost now (it sees what the charging path would see)."""
        with self.snapshot() as connection:
            return entitlement.check(connection, self.tenant, feature, amount).allowed

    def debit_of(self, event_id: uuid.UUID) -> list[uuid.UUID]:
        """The debit of a charged event (to refund later), as a list for `multiple`."""
        return [r.id for r in self.rows("SELECT id FROM ledger_entries WHERE tenant_id = :tenant "
                                        "AND usage_event_id = :id AND entry_type = 'debit'", id=event_id)]

    # --- credits -------------------------------------------------------------------------------

    @initialize(target=expiring_grants, amount=amounts, kind=st.sampled_from(["paid", "promotional"]),
                days=expiry_days, priority=priorities)
    def first_top_up(self, amount: Decimal, kind: str, days: int | None, priority: int) -> Any:
        return self.top_up(amount, kind, days, priority)

    @initialize(target=holds, size=sizes, feature=st.sampled_from(FEATURES))
    def first_hold(self, size: tuple[str, Any], feature: str) -> Any:
        return self.reserve(size, feature)

    def expiring(self, grant: Any) -> Any:
        self.grant_numbers.setdefault(grant.id, len(self.grant_numbers))
        return multiple(grant.id)

    @rule(target=expiring_grants, amount=amounts, kind=st.sampled_from(["paid", "promotional"]), days=expiry_days,
          priority=priorities)
    def top_up(self, amount: Decimal, kind: str, days: int | None, priority: int) -> Any:
        expires_at = datetime.now(timezone.utc) + timedelta(days=days) if days else None
        command = TopUpRequest(amount=text_amount(amount), idempotencyKey=self.key("topup"), kind=kind,
                               expiresAt=expires_at, priority=priority)
        result = self.attempt("top_up", lambda uow: credits.top_up(uow, self.tenant, command, created_by="prop"))
        assert result is not None, "a top-up is never refused"
        assert result.entry.amount == amount and result.entry.entry_type == "topup"
        assert result.grant is not None and result.grant.amount == amount and result.grant.kind == kind
        self.sent.append(("top_up", command))
        return self.expiring(result.grant) if expires_at else multiple()

    @rule(grant=expiring_grants)
    def grant_expires(self, grant: uuid.UUID) -> None:
        """Time passes until a grant expires (this one, or if it has nothing left another one that
        has), and the expiry job runs."""
        row = self.one("SELECT id, remaining FROM credit_grants WHERE tenant_id = :tenant AND id = :id", id=grant)
        if row.remaining == 0:
            live = self.rows("SELECT id, remaining FROM credit_grants WHERE tenant_id = :tenant AND kind <> 'debt' "
                             "AND remaining > 0 AND expires_at > now() ORDER BY created_at, id")
            row = live[self.grant_numbers[grant] % len(live)] if live else row
        self.did(f"grant_expires:{'some left' if row.remaining > 0 else 'empty'}")
        if row.remaining > 0:
            self.execute("UPDATE credit_grants SET expires_at = now() - interval '1 second' "
                         "WHERE tenant_id = :tenant AND id = :id", id=row.id)
        self.expire_due()

    @rule()
    def expiry_job(self) -> None:
        self.expire_due()

    @rule(target=expiring_grants, size=sizes, kind=st.sampled_from(["paid", "promotional"]),
          negative=st.booleans(), expiring=st.booleans())
    def adjust(self, size: tuple[str, Any], kind: str, negative: bool, expiring: bool) -> Any:
        amount = sized(size, self.spendable())
        if amount <= 0:
            return multiple()
        signed = -amount if negative else amount
        expires_at = datetime.now(timezone.utc) + timedelta(days=1) if expiring and not negative else None
        command = AdjustmentRequest(amount=text_amount(signed), reason="property test",
                                    idempotencyKey=self.key("adjust"), kind=kind, expiresAt=expires_at)
        result = self.attempt("adjust", lambda uow: credits.adjust(uow, self.tenant, command, created_by="prop"))
        if result is None:
            assert negative, "a positive adjustment is never refused"
            return multiple()
        assert result.entry.amount == signed and result.entry.entry_type == "adjustment"
        self.sent.append(("adjust", command))
        return self.expiring(result.grant) if expires_at else multiple()

    @rule(debit=debits, full=st.booleans(), size=sizes)
    def refund(self, debit: uuid.UUID, full: bool, size: tuple[str, Any]) -> None:
        taken = -self.one("SELECT amount FROM ledger_entries WHERE tenant_id = :tenant AND id = :id", id=debit).amount
        left = taken - self.refunded(debit)
        requested = None if full else sized(size, left)
        if requested is not None and requested <= 0:
            return
        command = RefundRequest(transactionId=debit, amount=None if requested is None else text_amount(requested),
                                reason="property test", idempotencyKey=self.key("refund"))
        result = self.attempt("refund", lambda uow: credits.refund(uow, self.tenant, command, created_by="prop"))
        if result is not None:
            assert result.entry.entry_type == "refund" and result.entry.related_entry_id == debit
            assert result.entry.amount == (left if requested is None else requested)
            self.sent.append(("refund", command))
            # what it gives back goes to the debt or to grants that have not expired: it is not lost
            revived = self.rows("SELECT g.id, g.kind, g.expires_at, d.amount FROM grant_draws d JOIN credit_grants g "
                                "ON g.id = d.grant_id WHERE d.tenant_id = :tenant AND d.ledger_entry_id = :id "
                                "AND g.expires_at <= now()", id=result.entry.id)
            assert not revived, revived
        else:  # refused only when it asked for more than is left (or for nothing)
            assert (left if requested is None else requested) > left or left == 0

    def refunded(self, debit_id: uuid.UUID) -> Decimal:
        row = self.one("SELECT coalesce(sum(amount), 0) AS total FROM ledger_entries WHERE tenant_id = :tenant "
                       "AND entry_type = 'refund' AND related_entry_id = :id", id=debit_id)
        return row.total

    # --- holds ---------------------------------------------------------------------------------

    @rule(target=holds, size=sizes, feature=st.sampled_from(FEATURES))
    def reserve(self, size: tuple[str, Any], feature: str) -> Any:
        amount = sized(size, self.spendable())
        if amount <= 0:
            return multiple()
        command = ReservationRequest(featureKey=feature, amount=text_amount(amount), ttlSeconds=900,
                                     idempotencyKey=self.key("reserve"))
        allowed = self.entitled(feature, amount)
        result = self.attempt("reserve", lambda uow: holds.reserve(uow, self.tenant, command, created_by="prop"))
        assert (result is not None) == allowed, f"entitlement said allowed={allowed} for a hold of {amount}"
        if result is None:
            return multiple()
        assert result.hold.amount == amount and result.hold.status == "active"
        self.sent.append(("reserve", command))
        self.hold_numbers.setdefault(result.hold.id, len(self.hold_numbers))
        return multiple(result.hold.id)

    @rule(hold_id=holds, only_active=st.booleans(), more=st.one_of(st.none(), sizes),
          ttl=st.one_of(st.none(), st.sampled_from([60, 900, 3600])))
    def extend(self, hold_id: uuid.UUID, only_active: bool, more: tuple[str, Any] | None, ttl: int | None) -> None:
        hold = self.hold(hold_id, only_active)
        more_amount = None if more is None else sized(more, self.spendable())
        if more_amount is not None and more_amount <= 0:
            more_amount = None
        if hold is None or (more_amount is None and ttl is None):
            return
        command = ExtendReservationRequest(amount=None if more_amount is None else text_amount(more_amount),
                                           ttlSeconds=ttl, idempotencyKey=self.key("extend"))
        allowed = hold.status == "active" and (more_amount is None or self.entitled(hold.feature_key, more_amount))
        result = self.attempt("extend", lambda uow: holds.extend(uow, self.tenant, hold.id, command,
                                                                         created_by="prop"))
        # holding more must fit in what may be spent now, as for a new hold (credits past their expiry
        # that no longer back a hold are not spendable), which is what entitlement answers
        assert (result is not None) == allowed, (
            f"entitlement said allowed={allowed} for holding {more_amount} more on a {hold.status} hold")
        if result is not None:
            assert result.hold.amount == hold.amount + (more_amount or ZERO)

    @rule(hold_id=holds, only_active=st.booleans())
    def release(self, hold_id: uuid.UUID, only_active: bool) -> None:
        hold = self.hold(hold_id, only_active)
        if hold is None:
            return
        command = ReleaseReservationRequest(idempotencyKey=self.key("release"))
        result = self.attempt("release", lambda uow: holds.release(uow, self.tenant, hold.id, command,
                                                                           created_by="prop"))
        if result is not None:
            assert result.hold.status == "released"

    @rule(ending=holds, running=holds, more=sizes)
    def one_call_ends_another_runs_long(self, ending: uuid.UUID, running: uuid.UUID, more: tuple[str, Any]) -> None:
        """One hold is released and, before anything else happens, another holds more."""
        self.release(ending, only_active=True)
        self.extend(running, only_active=True, more=more, ttl=None)

    @rule(hold_id=holds)
    def hold_expires(self, hold_id: uuid.UUID) -> None:
        """Time passes until the hold's TTL is over, and the expiry job runs."""
        hold = self.hold(hold_id, only_active=True)
        if hold is not None:
            self.execute("UPDATE reservations SET expires_at = now() - interval '1 second' "
                         "WHERE tenant_id = :tenant AND id = :id", id=hold.id)
        self.expire_due()

    # --- charges -------------------------------------------------------------------------------

    @rule(target=debits, size=sizes, feature=st.sampled_from(FEATURES))
    def charge(self, size: tuple[str, Any], feature: str) -> Any:
        """A charge without a hold; what entitlement answers just before must be what charging does."""
        amount = max(ZERO, sized(size, self.spendable()))  # a zero cost is a charge too
        allowed = self.entitled(feature, amount)
        accepted = self.accept(self.charge_command(amount, feature))
        assert accepted is not None, "a priced charge without a hold is always accepted"
        settled = {s.usage_event_id: s.status for s in self.charge_batch()}
        assert settled == {accepted.event.id: "charged" if allowed else "rejected"}, (allowed, settled,
                                                                                       self.event_status(accepted.event.id))
        return multiple(*self.debit_of(accepted.event.id))

    @rule(target=debits, hold_id=holds, only_active=st.booleans(),
          relation=st.sampled_from(["below", "equal", "above"]), delta=st.one_of(st.just(TICK), amounts),
          mismatched_feature=st.booleans())
    def charge_hold(self, hold_id: uuid.UUID, only_active: bool, relation: str, delta: Decimal,
                    mismatched_feature: bool) -> Any:
        """Settle a hold: the actual cost below, at or above what it holds."""
        hold = self.hold(hold_id, only_active)
        if hold is None:
            return multiple()
        cost = {"below": max(ZERO, hold.amount - delta), "equal": hold.amount, "above": hold.amount + delta}[relation]
        feature = hold.feature_key
        if mismatched_feature:
            feature = next(f for f in FEATURES if f != hold.feature_key)
        accepted = self.accept(self.charge_command(cost, feature, hold.id))
        if mismatched_feature or hold.status != "active":
            assert accepted is None, "a charge for another feature or a closed hold is refused at acceptance"
        if accepted is None:
            return multiple()
        settled = {s.usage_event_id: s.status for s in self.charge_batch()}
        assert list(settled) == [accepted.event.id]
        status = self.event_status(accepted.event.id)
        if cost <= hold.amount:  # the hold covers it whatever else the wallet holds
            assert status.status == "charged", status
        return multiple(*self.debit_of(accepted.event.id))

    @rule(target=debits, hold_id=holds)
    def charge_hold_twice(self, hold_id: uuid.UUID) -> Any:
        """Two charges accepted for one hold before either is charged: one settles it, once."""
        hold = self.hold(hold_id, only_active=True)
        if hold is None:
            return multiple()
        first = self.accept(self.charge_command(hold.amount, hold.feature_key, hold.id))
        second = self.accept(self.charge_command(hold.amount, hold.feature_key, hold.id))
        assert first is not None and second is not None
        settled = {s.usage_event_id: s.status for s in self.charge_batch()}
        assert settled == {first.event.id: "charged", second.event.id: "rejected"}, settled
        assert self.event_status(second.event.id).rejection_code == "reservation_closed"
        return multiple(*self.debit_of(first.event.id))

    @rule(target=debits, hold_id=holds, in_time=st.booleans(), job_first=st.booleans())
    def charge_hold_then_it_expires(self, hold_id: uuid.UUID, in_time: bool, job_first: bool) -> Any:
        """A charge accepted for a hold whose TTL ends before the worker charges it (the expiry job
        may get there first): a charge made before the hold's expiry still settles it, one made
        after is refused as expired."""
        hold = self.hold(hold_id, only_active=True)
        if hold is None:
            return multiple()
        accepted = self.accept(self.charge_command(hold.amount, hold.feature_key, hold.id))
        assert accepted is not None
        at = accepted.event.created_at + timedelta(microseconds=1 if in_time else -1)
        move_expiry = text("UPDATE reservations SET expires_at = :at WHERE tenant_id = :tenant AND id = :id")
        params = {"tenant": self.tenant, "id": hold.id, "at": at}
        if job_first:
            with self.engine.begin() as connection:
                connection.execute(move_expiry, params)
            with UnitOfWork(self.engine) as uow:
                expiry.expire_due(uow, self.tenant)
            with UnitOfWork(self.engine) as uow:
                settled = {s.usage_event_id: s.status for s in charging.charge_pending_batch(uow, self.tenant, 500)}
        else:
            with UnitOfWork(self.engine) as uow:  # the wallet lock first: no expiry job runs before the charge
                uow.connection.execute(text("SELECT 1 FROM wallets WHERE tenant_id = :tenant FOR UPDATE"), params)
                uow.connection.execute(move_expiry, params)
                settled = {s.usage_event_id: s.status for s in charging.charge_pending_batch(uow, self.tenant, 500)}
        status = self.event_status(accepted.event.id)
        if in_time:
            assert settled == {accepted.event.id: "charged"}, status
        else:
            assert settled == {accepted.event.id: "rejected"} and status.rejection_code == "reservation_expired", status
        assert self.one("SELECT status FROM reservations WHERE id = :id", id=hold.id).status == (
            "settled" if in_time else "expired")
        return multiple(*self.debit_of(accepted.event.id))

    @rule()
    def view_wallet(self) -> None:
        """GET /wallet's reading (which ends what is due first) shows what entitlement computed just
        before from the stored state: the balance a charge would meet."""
        with self.snapshot() as connection:
            expected = entitlement.check(connection, self.tenant, "call", ZERO).available_balance
        with UnitOfWork(self.engine) as uow:
            wallet, grants = expiry.end_due_and_read_wallet(uow, self.tenant)
        assert wallet.available_balance == wallet.current_balance - wallet.reserved_balance
        assert wallet.available_balance == expected, (wallet, expected)
        assert wallet.current_balance == sum((g.remaining for g in grants), ZERO), (wallet, grants)

    # --- wallet settings and replays -----------------------------------------------------------

    @rule(limit=st.one_of(st.sampled_from([ZERO, Decimal(1), Decimal(5)]), amounts), use_in_use=st.booleans())
    def overdraft(self, limit: Decimal, use_in_use: bool) -> None:
        wallet = self.wallet_now()
        if use_in_use and wallet is not None:  # exactly the overdraft in use now
            limit = max(ZERO, wallet.reserved_balance - wallet.current_balance)

        def change(uow: UnitOfWork) -> None:
            wallets.change_settings(uow, self.tenant, status=None, overdraft_limit=limit, clear_flag=False)  # commits

        self.attempt("overdraft", change)

    def set_status(self, status: str) -> None:
        def change(uow: UnitOfWork) -> None:
            wallets.change_settings(uow, self.tenant, status=status, overdraft_limit=None, clear_flag=False)  # commits

        self.attempt(f"status-{status}", change)

    @rule(size=sizes, expiring_top_up=st.booleans())
    def blocked_for_a_while(self, size: tuple[str, Any], expiring_top_up: bool) -> None:
        """A blocked wallet refuses charges and holds, but takes top-ups; then it is unblocked."""
        self.set_status("blocked")
        amount = max(TICK, sized(size, self.spendable()))
        refused = self.attempt("reserve", lambda uow: holds.reserve(uow, self.tenant, ReservationRequest(
            featureKey="call", amount=text_amount(amount), idempotencyKey=self.key("reserve")), created_by="prop"))
        assert refused is None
        accepted = self.accept(self.charge_command(amount, "call"))
        assert accepted is not None
        self.charge_batch()
        assert self.event_status(accepted.event.id).rejection_code == "wallet_blocked"
        if expiring_top_up:
            self.top_up(amount, "promotional", 1, 50)
        self.set_status("active")

    @rule(pick=st.integers(0, 1000))
    def replay(self, pick: int) -> None:
        """A request sent again with its key changes nothing and answers the first result."""
        if not self.sent:
            return
        operation, command = self.sent[pick % len(self.sent)]
        entries_before = self.one("SELECT count(*) AS n FROM ledger_entries WHERE tenant_id = :tenant").n

        def send(uow: UnitOfWork) -> Any:
            if operation == "reserve":
                return holds.reserve(uow, self.tenant, command, created_by="prop")
            return getattr(credits, operation)(uow, self.tenant, command, created_by="prop")

        result = self.attempt(f"replay-{operation}", send)
        assert result is not None and result.replayed
        assert self.one("SELECT count(*) AS n FROM ledger_entries WHERE tenant_id = :tenant").n == entries_before

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def books_balance(self) -> None:
        with self.snapshot() as connection:
            _check_books(connection, self.tenant)

    def teardown(self) -> None:
        for row in self.rows("SELECT status, rejection_code, count(*) AS n FROM usage_events "
                             "WHERE tenant_id = :tenant GROUP BY 1, 2"):
            self.outcomes[f"charge:{row.rejection_code or row.status}"] += row.n
        note(f"outcomes: {dict(sorted(self.outcomes.items()))}")
        CreditMachine.totals.update(self.outcomes)


class _Snapshot:
    """A connection in one REPEATABLE READ transaction: every read sees the same committed state,
    even if the expiry job commits in between."""

    def __init__(self, engine: Any):
        self.engine = engine

    def __enter__(self):  # noqa: ANN204
        self.connection = self.engine.connect().execution_options(isolation_level="REPEATABLE READ")
        self.transaction = self.connection.begin()
        return self.connection

    def __exit__(self, *exc: object) -> None:
        self.transaction.rollback()
        self.connection.close()


def _check_books(connection: Any, tenant: str) -> None:
    def rows(sql: str) -> list[Any]:
        return connection.execute(text(sql), {"tenant": tenant}).all()

    books = verification.verify(SimpleNamespace(connection=connection), tenant)
    assert books.ok, books.mismatches
    wallet_rows = rows("SELECT * FROM wallets WHERE tenant_id = :tenant")
    if not wallet_rows:
        return
    [w] = wallet_rows
    sums = rows("""
        SELECT coalesce((SELECT sum(amount) FROM ledger_entries WHERE tenant_id = :tenant), 0) AS entries,
               coalesce((SELECT sum(reserved_change) FROM ledger_entries WHERE tenant_id = :tenant), 0) AS reserved_changes,
               coalesce((SELECT sum(remaining) FROM credit_grants WHERE tenant_id = :tenant), 0) AS grants,
               coalesce((SELECT sum(amount) FROM grant_draws WHERE tenant_id = :tenant), 0) AS draws,
               coalesce((SELECT sum(amount) FROM reservations WHERE tenant_id = :tenant AND status = 'active'), 0) AS holds
    """)[0]
    assert w.current_balance == sums.entries == sums.grants == sums.draws, (w, sums)
    assert w.reserved_balance == sums.holds == sums.reserved_changes, (w, sums)
    shown = wallets.Wallet(**{k: getattr(w, k) for k in wallets.Wallet.__dataclass_fields__})
    assert shown.available_balance == w.current_balance - w.reserved_balance
    # nothing in this machine may take the wallet below what its overdraft allows
    assert w.flagged_at is None, w
    assert w.current_balance - w.reserved_balance + w.overdraft_limit >= 0, w

    grants = rows("""
        SELECT g.id, g.kind, g.amount, g.remaining, g.expires_at, g.expired_at,
               coalesce((SELECT sum(d.amount) FROM grant_draws d WHERE d.tenant_id = g.tenant_id
                         AND d.grant_id = g.id), 0) AS drawn
        FROM credit_grants g WHERE g.tenant_id = :tenant""")
    debts = [g for g in grants if g.kind == "debt"]
    assert len(debts) <= 1, debts
    for g in grants:
        assert g.remaining == g.drawn, g  # every grant starts empty; its draws are all that moved it
        if g.kind == "debt":
            assert g.remaining <= 0 and g.expires_at is None, g
        else:
            assert 0 <= g.remaining <= g.amount, g
    if debts and debts[0].remaining < 0:  # credits repay the debt first: the two never coexist
        assert all(g.remaining == 0 for g in grants if g.kind != "debt"), grants

    # each entry's draws add up to its amount; holds move no money
    unbalanced = rows("""
        SELECT l.id, l.entry_type, l.amount, coalesce(sum(d.amount), 0) AS drawn
        FROM ledger_entries l LEFT JOIN grant_draws d ON d.tenant_id = l.tenant_id AND d.ledger_entry_id = l.id
        WHERE l.tenant_id = :tenant GROUP BY l.tenant_id, l.id HAVING l.amount <> coalesce(sum(d.amount), 0)""")
    assert not unbalanced, unbalanced

    holds = rows("""
        SELECT r.id, r.status, r.amount, r.settled_amount, r.usage_event_id,
               coalesce((SELECT sum(l.reserved_change) FROM ledger_entries l WHERE l.tenant_id = r.tenant_id
                         AND l.reservation_id = r.id), 0) AS reserved_changes,
               (SELECT count(*) FROM ledger_entries l WHERE l.tenant_id = r.tenant_id AND l.reservation_id = r.id
                AND l.entry_type = 'debit') AS debits,
               (SELECT min(l.amount) FROM ledger_entries l WHERE l.tenant_id = r.tenant_id AND l.reservation_id = r.id
                AND l.entry_type = 'debit') AS debit_amount,
               (SELECT min(l.usage_event_id::text) FROM ledger_entries l WHERE l.tenant_id = r.tenant_id
                AND l.reservation_id = r.id AND l.entry_type = 'debit') AS debit_event
        FROM reservations r WHERE r.tenant_id = :tenant""")
    for r in holds:
        assert r.reserved_changes == (r.amount if r.status == "active" else 0), r
        if r.status == "settled":
            assert r.debits == 1, r
            assert -r.debit_amount == r.settled_amount and r.debit_event == str(r.usage_event_id), r
        else:
            assert r.debits == 0, r

    events = rows("""
        SELECT e.id, e.status, e.total_cost, e.reservation_id, e.rejection_code,
               (SELECT count(*) FROM ledger_entries l WHERE l.tenant_id = e.tenant_id AND l.usage_event_id = e.id
                AND l.entry_type = 'debit') AS debits,
               (SELECT min(l.amount) FROM ledger_entries l WHERE l.tenant_id = e.tenant_id
                AND l.usage_event_id = e.id AND l.entry_type = 'debit') AS debit_amount
        FROM usage_events e WHERE e.tenant_id = :tenant""")
    for e in events:
        assert e.status in ("charged", "rejected"), e  # every step charges what it accepted
        if e.status == "charged":
            assert e.debits == 1 and -e.debit_amount == e.total_cost, e
        else:
            assert e.debits == 0, e

    over_refunded = rows("""
        SELECT d.id, d.amount, sum(r.amount) AS refunded
        FROM ledger_entries d JOIN ledger_entries r ON r.tenant_id = d.tenant_id AND r.related_entry_id = d.id
                                                     AND r.entry_type = 'refund'
        WHERE d.tenant_id = :tenant AND d.entry_type = 'debit'
        GROUP BY d.id, d.amount HAVING sum(r.amount) > -d.amount""")
    assert not over_refunded, over_refunded
    stray = rows("SELECT id, related_entry_id FROM ledger_entries l WHERE tenant_id = :tenant AND entry_type = 'refund' "
                 "AND NOT EXISTS (SELECT 1 FROM ledger_entries d WHERE d.tenant_id = l.tenant_id "
                 "AND d.id = l.related_entry_id AND d.entry_type = 'debit')")
    assert not stray, stray


def test_credit_lifecycle_keeps_the_books(engine):
    """Modest by default (well under a minute); a deeper hunt:
    CREDIT_PROPERTY_EXAMPLES=300 CREDIT_PROPERTY_STEPS=60 pytest -s tests/integration/test_credit_properties.py"""
    CreditMachine.engine = engine
    CreditMachine.totals.clear()
    run_state_machine_as_test(CreditMachine, settings=settings(
        max_examples=int(os.environ.get("CREDIT_PROPERTY_EXAMPLES", "25")),
        stateful_step_count=int(os.environ.get("CREDIT_PROPERTY_STEPS", "25")), deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    ))
    print("outcomes:", dict(sorted(CreditMachine.totals.items())))

