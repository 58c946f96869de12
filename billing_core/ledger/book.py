"""The wallet book: a wallet locked for one transaction, with its live credit grants and the holds
in play. Every movement of money or holds goes through it, and flush() writes them all with a
handful of statements: the ledger entries (an unbroken balance chain in the order they were made),
which grants each entry drew from, the grants, the holds and the wallet's balances.

Invariants, kept because every writer holds the wallet's row lock:
- balance = sum of ledger amounts = sum of the grants' remaining amounts (the debt grant is negative);
- reserved balance = sum of ledger reserved_change = sum of the active holds.

Debits draw on grants in one order, `draw_order` (documented in the README), and refunds return
credit in the reverse of that order as it stood when the debit was made:
1. grants past their expiry that are still backing holds (they expire as soon as the holds end);
2. lower `priority` first (0 to 100, default 50);
3. soonest expiry first, grants that never expire last;
4. promotional before paid;
5. oldest first.
What the grants cannot cover (an overdraft, a clawback) goes onto the wallet's one debt grant, drawn
last, and every credit repays that debt before it adds to any grant.

What is due to end (holds past their TTL, credits past their expiry) is decided in expiry.py; the
book only carries it out (close_hold, expire_grant).
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text

from billing_core import money
from billing_core.db import UnitOfWork, insert_rows, unnest_arrays
from billing_core.errors import ReservationClosed, ReservationExpired
from billing_core.ledger.model import (
    EntryType,
    Grant,
    GrantKind,
    Hold,
    HoldStatus,
    LedgerEntry,
    UsageEventStatus,
    Wallet,
    WalletStatus,
    owes,
)
from billing_core.ledger.tables import credit_grants, grant_draws, ledger_entries, wallets
from billing_core.ledger.wallets import ensure_wallet
from billing_core.lifecycle.budgets import BudgetGuard
from billing_core.lifecycle.tables import reservations
from billing_core.notifications import outbox
from billing_core.usage.tables import usage_events

DEFAULT_PRIORITY = 50
ZERO = Decimal(0)


_GRANT_COLUMNS = [f.name for f in fields(Grant)]
_HOLD_COLUMNS = [f.name for f in fields(Hold)]


@dataclass
class _Changes:
    entries: list[dict[str, Any]] = field(default_factory=list)
    draws: dict[tuple[uuid.UUID, uuid.UUID], Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    new_grants: set[uuid.UUID] = field(default_factory=set)
    changed_grants: set[uuid.UUID] = field(default_factory=set)
    new_holds: set[uuid.UUID] = field(default_factory=set)
    changed_holds: set[uuid.UUID] = field(default_factory=set)


class WalletBook:
    def __init__(self, uow: UnitOfWork, wallet: Wallet, now: datetime, grants: list[Grant],
                 holds: dict[uuid.UUID, Hold]):
        self.uow, self.wallet, self.now = uow, wallet, now
        self.tenant_id = wallet.tenant_id
        self.balance, self.reserved = wallet.current_balance, wallet.reserved_balance
        self.flag_reason: str | None = None
        self.settled_into_debt = False
        self.grants = {g.id: g for g in grants}
        self.holds = holds
        # due holds that a pending charge made before their expiry will settle: not expired under it
        self.awaiting: set[uuid.UUID] = set()
        self.budgets = BudgetGuard.load(uow, wallet.tenant_id)
        self._changes = _Changes()

    @classmethod
    def open(cls, uow: UnitOfWork, tenant_id: str) -> WalletBook:
        """Lock the tenant's wallet (created on first use) and load its live grants, its holds past
        their expiry and its budgets."""
        ensure_wallet(uow, tenant_id)
        wallet = Wallet(**uow.connection.execute(
            select(wallets).where(wallets.c.tenant_id == tenant_id).with_for_update()).one()._mapping)
        # the time once the lock is held, not the transaction's start: a transaction that waited for the
        # lock must not judge expiries by a moment before the one it waited for
        now = uow.connection.execute(select(func.clock_timestamp())).scalar_one()
        grants = [Grant(**r._mapping) for r in uow.connection.execute(
            select(credit_grants).where(credit_grants.c.tenant_id == tenant_id,
                                        credit_grants.c.wallet_id == wallet.id, credit_grants.c.remaining != 0))]
        due = {r.id: Hold(**r._mapping) for r in uow.connection.execute(
            select(reservations).where(reservations.c.tenant_id == tenant_id, reservations.c.status == HoldStatus.ACTIVE,
                                       reservations.c.expires_at <= now))}
        book = cls(uow, wallet, now, grants, due)
        if due:
            # a charge accepted before its hold expired still settles it, whoever gets to the hold first
            book.awaiting = set(uow.connection.execute(
                select(usage_events.c.reservation_id).distinct()
                .join(reservations, (reservations.c.tenant_id == usage_events.c.tenant_id)
                      & (reservations.c.id == usage_events.c.reservation_id))
                .where(usage_events.c.tenant_id == tenant_id, usage_events.c.status == UsageEventStatus.PENDING,
                       usage_events.c.reservation_id.in_(list(due)),
                       usage_events.c.created_at < reservations.c.expires_at)).scalars())
        return book

    def stop_awaiting(self, hold_ids: Iterable[uuid.UUID]) -> None:
        """These holds' pending charges have been settled or refused: expiry no longer spares them."""
        self.awaiting -= set(hold_ids)

    def load_holds(self, reservation_ids: Iterable[uuid.UUID]) -> None:
        """Bring these holds of the tenant into the book (ids of another tenant find nothing)."""
        missing = [r for r in reservation_ids if r not in self.holds]
        if missing:
            for row in self.uow.connection.execute(
                select(reservations).where(reservations.c.tenant_id == self.tenant_id,
                                           reservations.c.id.in_(missing))):
                self.holds[row.id] = Hold(**row._mapping)

    # --- what the wallet holds ---------------------------------------------------------------

    @property
    def available(self) -> Decimal:
        return money.subtract(self.balance, self.reserved)

    @property
    def spendable(self) -> Decimal:
        """What a debit may take: the available balance plus the overdraft allowed."""
        return money.add(self.available, self.wallet.overdraft_limit)

    @property
    def in_debt(self) -> bool:
        return owes(self.balance, self.wallet.overdraft_limit)

    @property
    def blocked(self) -> bool:
        return self.wallet.status != WalletStatus.ACTIVE

    def _debt(self) -> Grant:
        for grant in self.grants.values():
            if grant.kind == GrantKind.DEBT:
                return grant
        debt = self.uow.connection.execute(
            select(credit_grants).where(credit_grants.c.tenant_id == self.tenant_id,
                                        credit_grants.c.wallet_id == self.wallet.id, credit_grants.c.kind == GrantKind.DEBT)
        ).one_or_none()
        grant = Grant(**debt._mapping) if debt else self._new_grant(GrantKind.DEBT, ZERO, source="overdraft")
        self.grants[grant.id] = grant
        return grant

    def _new_grant(self, kind: str, amount: Decimal, *, source: str, priority: int = DEFAULT_PRIORITY,
                   expires_at: datetime | None = None, reference: str | None = None) -> Grant:
        grant = Grant(id=uuid.uuid4(), tenant_id=self.tenant_id, wallet_id=self.wallet.id, kind=kind,
                      amount=amount, remaining=ZERO, priority=priority, expires_at=expires_at, expired_at=None,
                      source=source, reference=reference, created_at=self.now, updated_at=self.now)
        self.grants[grant.id] = grant
        self._changes.new_grants.add(grant.id)
        return grant

    def load_grants(self, grant_ids: Iterable[uuid.UUID]) -> None:
        """Bring grants with nothing left (not loaded by open) into the book, e.g. to refund into them."""
        missing = [g for g in grant_ids if g not in self.grants]
        if missing:
            for row in self.uow.connection.execute(
                select(credit_grants).where(credit_grants.c.tenant_id == self.tenant_id,
                                            credit_grants.c.id.in_(missing))):
                self.grants[row.id] = Grant(**row._mapping)

    def live_grants(self) -> list[Grant]:
        """Grants with something left, in the order debits draw on them."""
        return sorted((g for g in self.grants.values() if g.kind != GrantKind.DEBT and g.remaining > 0),
                      key=lambda g: draw_order(g, self.now))

    # --- moving money ------------------------------------------------------------------------

    def _entry(self, entry_type: str, amount: Decimal, *, reserved_change: Decimal = ZERO,
               usage_event_id: uuid.UUID | None = None, reservation_id: uuid.UUID | None = None,
               grant_id: uuid.UUID | None = None, related_entry_id: uuid.UUID | None = None,
               reference: str | None = None, description: str | None = None,
               idempotency_key: str | None = None, created_by: str | None = None,
               sub_account_event_id: uuid.UUID | None = None) -> dict[str, Any]:
        before = self.balance
        self.balance = money.add(before, amount)
        self.reserved = money.add(self.reserved, reserved_change)
        entry = {"id": uuid.uuid4(), "tenant_id": self.tenant_id, "wallet_id": self.wallet.id,
                 "entry_type": entry_type, "amount": amount, "balance_before": before, "balance_after": self.balance,
                 "usage_event_id": usage_event_id, "reference": reference, "description": description,
                 "idempotency_key": idempotency_key, "created_by": created_by, "reserved_change": reserved_change,
                 "reservation_id": reservation_id, "grant_id": grant_id, "related_entry_id": related_entry_id,
                 "sub_account_event_id": sub_account_event_id, "agency_amount": None}
        self._changes.entries.append(entry)
        return entry

    def _move(self, entry: dict[str, Any], grant: Grant, amount: Decimal) -> None:
        if amount == 0:
            return
        grant.remaining = money.add(grant.remaining, amount)
        grant.updated_at = self.now
        if grant.remaining == 0 and grant.overdue(self.now):
            grant.expired_at = grant.expired_at or self.now  # an overdue grant used up is over
        if grant.id not in self._changes.new_grants:
            self._changes.changed_grants.add(grant.id)
        self._changes.draws[(entry["id"], grant.id)] += amount

    def debit(self, amount: Decimal, *, entry_type: str = EntryType.DEBIT, first: Grant | None = None,
              **entry: Any) -> dict[str, Any]:
        """Take `amount` (>= 0) from the grants in draw order (`first` before the others); what they
        cannot cover goes onto the debt. Checking that it may is the caller's job."""
        record = self._entry(entry_type, -amount, **entry)
        left = amount
        order = self.live_grants()
        if first is not None and first in order:
            order.remove(first)
            order.insert(0, first)
        for grant in order:
            if left == 0:
                break
            take = min(left, grant.remaining)
            self._move(record, grant, -take)
            left = money.subtract(left, take)
        if left > 0:
            self._move(record, self._debt(), -left)
        return record

    def _repay_debt(self, entry: dict[str, Any], amount: Decimal) -> Decimal:
        """Use a credit to pay the debt first; returns what is left of the credit."""
        # a debt with something owed is live, so open() loaded it
        debt = next((g for g in self.grants.values() if g.kind == GrantKind.DEBT), None)
        if debt is None or debt.remaining >= 0:
            return amount
        repay = min(amount, -debt.remaining)
        self._move(entry, debt, repay)
        return money.subtract(amount, repay)

    def add_grant(self, amount: Decimal, *, kind: str, source: str, entry_type: str = EntryType.TOPUP,
                  priority: int = DEFAULT_PRIORITY, expires_at: datetime | None = None,
                  grant_reference: str | None = None, **entry: Any) -> tuple[dict[str, Any], Grant]:
        """Credit `amount` as a new grant (after repaying any debt)."""
        grant = self._new_grant(kind, amount, source=source, priority=priority, expires_at=expires_at,
                                reference=grant_reference)
        record = self._entry(entry_type, amount, grant_id=grant.id, **entry)
        self._move(record, grant, self._repay_debt(record, amount))
        return record, grant

    def restore(self, amount: Decimal, draws: list[tuple[uuid.UUID | None, Decimal]], *,
                entry_type: str = EntryType.REFUND, **entry: Any) -> dict[str, Any]:
        """Credit `amount` back into the grants a debit drew from (`draws`: grant and what may still
        be returned to it, in the order drawn), last drawn first, after repaying any debt. What does
        not fit — drawn from the debt, or from a grant past its expiry, which is not revived — goes
        into a new grant that does not expire: promotional if it all came from promotional credits,
        else paid."""
        record = self._entry(entry_type, amount, **entry)
        left = self._repay_debt(record, amount)
        self.load_grants(g for g, _ in draws if g is not None)
        rest_kind = None
        for grant_id, returnable in reversed(draws):
            grant = self.grants.get(grant_id) if grant_id is not None else None
            if left == 0:
                break
            if grant is None or grant.kind == GrantKind.DEBT or grant.overdue(self.now):
                kind = grant.kind if grant is not None and grant.kind != GrantKind.DEBT else GrantKind.PAID
                rest_kind = kind if rest_kind in (None, kind) else GrantKind.PAID
                continue
            put = min(left, returnable, money.subtract(grant.amount, grant.remaining))
            if put > 0:
                self._move(record, grant, put)
                left = money.subtract(left, put)
        if left > 0:
            grant = self._new_grant(rest_kind or GrantKind.PAID, left, source="refund")
            record["grant_id"] = grant.id
            self._move(record, grant, left)
        return record

    def flag(self, reason: str) -> None:
        self.flag_reason = reason

    def owe(self) -> None:
        """A call settled in full past what the wallet could spend (the plan's grace): the wallet
        records since when, until credits bring what it can spend back to zero or more."""
        self.settled_into_debt = True

    # --- holds -------------------------------------------------------------------------------

    def hold(self, hold: Hold, **entry: Any) -> dict[str, Any]:
        self.holds[hold.id] = hold
        self._changes.new_holds.add(hold.id)
        self.budgets.hold_changed(hold.feature_key, hold.amount)
        return self._entry(EntryType.HOLD, ZERO, reserved_change=hold.reserving, reservation_id=hold.id, **entry)

    def extend_hold(self, hold: Hold, more: Decimal, expires_at: datetime,
                    **entry: Any) -> dict[str, Any] | None:
        hold.amount = money.add(hold.amount, more)
        hold.expires_at = expires_at
        self._touch(hold)
        self.budgets.hold_changed(hold.feature_key, more)
        if more == 0:
            return None
        return self._entry(EntryType.HOLD, ZERO, reserved_change=ZERO if hold.agency_id else more,
                           reservation_id=hold.id, **entry)

    def close_hold(self, hold: Hold, status: HoldStatus, **entry: Any) -> dict[str, Any]:
        """Release or expire a hold: its amount goes back to the available balance."""
        hold.status, hold.closed_at = status, self.now
        self._touch(hold)
        self.budgets.hold_changed(hold.feature_key, -hold.amount)
        return self._entry(EntryType.HOLD_RELEASE, ZERO, reserved_change=-hold.reserving,
                           reservation_id=hold.id, description=f"hold {status}", **entry)

    def settle_hold(self, hold: Hold, cost: Decimal, usage_event_id: uuid.UUID | None,
                    **entry: Any) -> dict[str, Any]:
        """Debit the actual cost and release the whole hold, in one entry. A hold that expired after
        the charge was made was released already; its late settlement releases nothing more."""
        releasing = self.held_by(hold)
        hold.status, hold.closed_at = HoldStatus.SETTLED, self.now
        hold.settled_amount, hold.usage_event_id = cost, usage_event_id
        self._touch(hold)
        self.budgets.hold_changed(hold.feature_key, -releasing)
        if hold.agency_id is not None:  # its agency's wallet set it aside, not this one
            releasing = ZERO
        return self.debit(cost, reserved_change=-releasing, reservation_id=hold.id,
                          usage_event_id=usage_event_id, **entry)

    @staticmethod
    def held_by(hold: Hold) -> Decimal:
        """What the hold still sets aside: its amount while active, nothing once it has ended."""
        return hold.amount if hold.status == HoldStatus.ACTIVE else ZERO

    def _touch(self, hold: Hold) -> None:
        hold.updated_at = self.now
        if hold.id not in self._changes.new_holds:
            self._changes.changed_holds.add(hold.id)

    # --- expiry (what is due is expiry.py's rule) --------------------------------------------

    def expire_grant(self, grant: Grant, amount: Decimal) -> dict[str, Any]:
        """Take `amount` (> 0) of an overdue grant off the balance as expired."""
        record = self._entry(EntryType.EXPIRY, -amount, grant_id=grant.id, description=f"{grant.kind} credits expired")
        self._move(record, grant, -amount)
        return record

    # --- writing -----------------------------------------------------------------------------

    def flush(self) -> list[uuid.UUID]:
        """Write everything this book did; returns the ids of the ledger entries, in order."""
        changes, connection = self._changes, self.uow.connection
        if changes.new_grants:
            insert_rows(self.uow, credit_grants, [_row(self.grants[g], _GRANT_COLUMNS) for g in changes.new_grants])
        if changes.entries:
            insert_rows(self.uow, ledger_entries, changes.entries)
        if changes.draws:
            insert_rows(self.uow, grant_draws, [
                {"tenant_id": self.tenant_id, "ledger_entry_id": entry_id, "grant_id": grant_id, "amount": amount}
                for (entry_id, grant_id), amount in changes.draws.items() if amount != 0])
        if changes.changed_grants - changes.new_grants:
            _update_rows(self.uow, credit_grants, self.tenant_id, [
                {"id": g, "remaining": self.grants[g].remaining, "expired_at": self.grants[g].expired_at}
                for g in changes.changed_grants - changes.new_grants])
        if changes.new_holds:
            insert_rows(self.uow, reservations, [_row(self.holds[h], _HOLD_COLUMNS) for h in changes.new_holds])
        if changes.changed_holds - changes.new_holds:
            _update_rows(self.uow, reservations, self.tenant_id, [
                {k: getattr(self.holds[h], k) for k in ("id", "status", "amount", "settled_amount",
                                                        "usage_event_id", "expires_at", "closed_at")}
                for h in changes.changed_holds - changes.new_holds])
        self._announce_debt(owes(self.wallet.current_balance, self.wallet.overdraft_limit), self.in_debt)
        moved = (self.balance, self.reserved) != (self.wallet.current_balance, self.wallet.reserved_balance)
        owing: datetime | None = self.wallet.in_debt_since
        if self.settled_into_debt and owing is None:
            owing = self.now
        elif owing is not None and not self.settled_into_debt and self.spendable >= 0:
            owing = None  # repaid
        if moved or self.flag_reason or owing != self.wallet.in_debt_since:
            values: dict[str, Any] = {"current_balance": self.balance, "reserved_balance": self.reserved,
                                      "in_debt_since": owing, "updated_at": func.now()}
            if self.flag_reason:
                # the book's time as a parameter: no now() in COALESCE on a distributed table (Citus)
                values.update(flagged_at=func.coalesce(wallets.c.flagged_at, self.now), flag_reason=self.flag_reason)
            connection.execute(wallets.update().where(wallets.c.tenant_id == self.tenant_id,
                                                      wallets.c.id == self.wallet.id).values(**values))
        self.budgets.flush()
        written = [e["id"] for e in changes.entries]
        self.wallet = replace(self.wallet, current_balance=self.balance, reserved_balance=self.reserved,
                              in_debt_since=owing)
        self.settled_into_debt = False
        self._changes = _Changes()
        return written

    def _announce_debt(self, before: bool, after: bool) -> None:
        """The wallet went into debt (`wallet.in_debt`: new calls are refused until it is repaid) or
        out of it (`wallet.debt_repaid`): written with the movement that crossed, to the tenant's channels."""
        if before == after:
            return
        event = "wallet.in_debt" if after else "wallet.debt_repaid"
        outbox.enqueue(self.uow, self.tenant_id, event, {
            "walletId": str(self.wallet.id), "balance": money.format_decimal(self.balance),
            "debt": money.format_decimal(max(-self.balance, ZERO))})

    def entries(self, entry_ids: list[uuid.UUID]) -> list[LedgerEntry]:
        """Ledger entries as stored (with their sequence and time), in the order given."""
        rows = {r.id: LedgerEntry(**r._mapping) for r in self.uow.connection.execute(
            select(ledger_entries).where(ledger_entries.c.tenant_id == self.tenant_id,
                                         ledger_entries.c.id.in_(entry_ids)))}
        return [rows[i] for i in entry_ids]


def draw_order(grant: Grant, at: datetime) -> tuple:
    """The one order in which debits draw on grants at time `at` (a sort key): overdue grants first
    (they only still hold credit that backs holds), then lower priority, sooner expiry (never last),
    promotional before paid, oldest; the debt last of all. Refunds return credit in the reverse of
    this order as it stood when the debit was made."""
    return (grant.kind == GrantKind.DEBT, not grant.overdue(at), grant.priority, grant.expires_at is None,
            grant.expires_at or at, grant.kind != GrantKind.PROMOTIONAL, grant.created_at, grant.id)


def read_live_grants(uow: UnitOfWork, tenant_id: str) -> list[Grant]:
    """The wallet's grants with something left (and the debt, if any), in the order debits would draw
    on them now; read without the wallet's lock."""
    rows = uow.connection.execute(  # the time with the rows: no round trip of its own
        select(*credit_grants.c, func.now().label("read_at"))
        .where(credit_grants.c.tenant_id == tenant_id, credit_grants.c.remaining != 0)).all()
    grants = [Grant(**{c: getattr(r, c) for c in _GRANT_COLUMNS}) for r in rows]
    return sorted(grants, key=lambda g: draw_order(g, rows[0].read_at)) if rows else []


def check_settleable(hold: Hold, at: datetime) -> None:
    """A hold can be settled once, by a charge made before it expired — even if the hold expired
    before the charge reached it (then its credits are no longer set aside: see settle_hold)."""
    if hold.status in (HoldStatus.SETTLED, HoldStatus.RELEASED):
        raise ReservationClosed(f"the reservation was {hold.status} already",
                                {"field": "reservationId", "reservationId": str(hold.id), "status": hold.status})
    if at >= hold.expires_at:
        raise ReservationExpired("the reservation expired",
                                 {"field": "reservationId", "reservationId": str(hold.id),
                                  "expiresAt": hold.expires_at.isoformat()})


def _row(obj: Any, columns: list[str]) -> dict[str, Any]:
    return {c: getattr(obj, c) for c in columns}


def _update_rows(uow: UnitOfWork, table: Any, tenant_id: str, rows: list[dict[str, Any]]) -> None:
    """One UPDATE for many rows of `table`, joined to their new values passed as arrays."""
    source, params = unnest_arrays(table, rows)
    assignments = ", ".join(f'"{name}" = rows."{name}"' for name in rows[0] if name != "id")
    uow.connection.execute(text(
        f"UPDATE {table.name} AS t SET {assignments}, updated_at = now() FROM {source} "
        f"WHERE t.tenant_id = :tenant_id AND t.id = rows.id"
    ), {**params, "tenant_id": tenant_id})
