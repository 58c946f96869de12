"""The agency's side of a sub-account's charge: in the same transaction as the sub-account's, the
agency's wallet is debited at the agency's price (what LAD charges the agency for that usage, exactly
as if the agency had used it: its overrides, multipliers and graduated month position), and the
pair (resale, agency price) is recorded for the agency's statements.

Lock order, everywhere: the sub-account's wallet first, then the agency's. The agency's own charges
take only its own lock, so no two transactions wait on each other in a cycle.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text

from billing_core import money
from billing_core.agencies.tables import agency_charges
from billing_core.agencies.tree import PREPAID, SubAccount
from billing_core.catalog import CATALOG, TierPositions, price_items
from billing_core.catalog.positions import month_of
from billing_core.db import UnitOfWork, insert_rows, unnest_arrays
from billing_core.errors import BudgetExceeded, InsufficientBalance, WalletBlocked
from billing_core.ledger.book import WalletBook
from billing_core.ledger.model import Hold, HoldStatus
from billing_core.usage.tables import usage_event_items


def check_agency_budget(book: WalletBook, feature_key: str, at: datetime, amount: Decimal,
                        releasing: Decimal = Decimal(0)) -> None:
    """The agency's own budgets count its sub-accounts' usage at its price too: refuse what takes the
    feature past a rejecting budget of the agency (`budget_exceeded`, `details.level: "agency"`). The
    refusal is the sub-account's, so it carries no number of the agency's (its limit and use are at
    the agency's prices)."""
    try:
        book.budgets.check(feature_key, at, amount, releasing)
    except BudgetExceeded as exceeded:
        raise BudgetExceeded(f"the agency's {exceeded.details.get('period', '')}ly budget of {feature_key} "
                             "would be exceeded", {"featureKey": feature_key, "level": "agency"}) from None


class AgencyLevel:
    """The agency's wallet, prices and month position, locked for one sub-account's group of charges."""

    def __init__(self, uow: UnitOfWork, sub_account: SubAccount):
        self.uow, self.sub_account = uow, sub_account
        agency_id = sub_account.agency_id
        # the agency's prices before its lock: every sub-account's group waits for that lock, so what
        # needs no lock is done before it
        self.catalog = CATALOG.for_tenant(uow, agency_id)
        # the caller holds the sub-account's wallet lock already: sub-account first, then agency
        self.book = WalletBook.open(uow, agency_id)
        self.positions = TierPositions(uow, agency_id, locked=True)
        self.rows: list[dict[str, Any]] = []
        self.item_rows: list[dict[str, Any]] = []
        self._item_costs: list[tuple[int, Decimal]] = []
        self._month_spend: dict[datetime, Decimal] = {}
        self.charged_at = uow.now()  # the transaction's time: the sub-account's events' charged_at

    @property
    def prepaid(self) -> bool:
        return self.sub_account.funding == PREPAID

    def price(self, items: list[Any], at: datetime, priced: list[Any] | None = None) -> tuple[Decimal, list[Any]]:
        """The agency's price of an event's items and the month advances it makes (`priced`: already
        priced without a month position, before the lock); the price of each item is kept for record()."""
        if priced is None:
            priced = price_items(self.uow, self.book.tenant_id, items, at, self.catalog, self.positions)
        self._item_costs = [(i.position, p.cost) for i, p in zip(items, priced, strict=True)]
        return money.total(p.cost for p in priced), [p.advance for p in priced if p.advance is not None]

    def check(self, at: datetime, resale: Decimal, agency_cost: Decimal, hold_id: uuid.UUID | None = None,
              feature_key: str | None = None) -> None:
        """Refuse what the agency's wallet cannot cover (with what the agency's hold backing the
        settled hold releases), what passes a rejecting budget of the agency for the feature (at the
        agency's price, counted at the event's acceptance), or what passes an agency-funded
        sub-account's monthly spend cap (at resale prices; a hold's settlement was admitted against
        the cap when it opened)."""
        if self.book.blocked:
            raise WalletBlocked("the agency's wallet is blocked; charges are refused", {"wallet": "agency"})
        backing = self._backing(hold_id)
        releasing = self.book.held_by(backing) if backing is not None else Decimal(0)
        if agency_cost > money.add(self.book.spendable, releasing):
            raise InsufficientBalance("insufficient balance in the agency's wallet for this charge",
                                      {"wallet": "agency"})
        if feature_key is not None:
            held = backing.amount if backing is not None and backing.feature_key == feature_key else Decimal(0)
            check_agency_budget(self.book, feature_key, at, agency_cost, held)
        cap = self.sub_account.spend_cap
        if not self.prepaid and cap is not None and backing is None:
            spent = self._spent(at)
            if money.add(spent, resale) > cap:
                raise BudgetExceeded("the charge passes the sub-account's monthly spend cap",
                                     {"spendCap": money.format_decimal(cap), "spent": money.format_decimal(spent),
                                      "required": money.format_decimal(resale)})

    def record(self, event: Any, resale: Decimal, agency_cost: Decimal, advances: list[Any]) -> None:
        """Debit the agency at its price for this event (once: a unique index on the agency's
        entries by sub-account event) and keep the pair for the statements, in the same transaction."""
        # the event is the sub-account's (usage_event_id is keyed by tenant): the entry names it in
        # sub_account_event_id, one debit per agency and event (a unique index)
        details = {"sub_account_event_id": event.id, "reference": event.external_reference_id,
                   "description": f"{event.feature_key} usage of {self.sub_account.tenant_id}",
                   "created_by": event.user_id}
        backing = self._backing(event.reservation_id)
        if backing is not None:  # the agency's hold backing the sub-account's: settled at the agency's price
            # (its usage_event_id stays empty: the event is the sub-account's; the debit names it)
            entry = self.book.settle_hold(backing, agency_cost, None, **details)
        else:
            entry = self.book.debit(agency_cost, **details)
        if advances:
            self.positions.advance(advances)
        self.book.budgets.spend(event.feature_key, event.created_at, agency_cost)  # its budgets: at its price
        self.item_rows += [{"usage_event_id": event.id, "position": position, "agency_cost": cost}
                           for position, cost in self._item_costs]
        month = month_of(event.created_at)
        self._month_spend[month] = money.add(self._spent(event.created_at), resale)
        self.rows.append({"tenant_id": self.book.tenant_id, "usage_event_id": event.id,
                          "sub_account_id": self.sub_account.tenant_id, "feature_key": event.feature_key,
                          "resale_amount": resale, "agency_amount": agency_cost, "ledger_entry_id": entry["id"],
                          "created_at": event.created_at, "occurred_at": event.occurred_at,
                          "charged_at": self.charged_at})

    def _backing(self, hold_id: uuid.UUID | None) -> Hold | None:
        """The agency's hold backing the sub-account's hold `hold_id` (agency funding), if it can be settled."""
        if hold_id is None or self.prepaid:
            return None
        self.book.load_holds([hold_id])
        backing = self.book.holds.get(hold_id)
        if backing is None or backing.sub_account_id != self.sub_account.tenant_id or backing.status in (
                HoldStatus.SETTLED, HoldStatus.RELEASED):
            return None
        return backing

    def _spent(self, at: datetime) -> Decimal:
        month = month_of(at)
        if month not in self._month_spend:
            c = agency_charges.c
            self._month_spend[month] = self.uow.connection.execute(
                select(func.coalesce(func.sum(c.resale_amount - c.resale_refunded - c.resale_corrected), 0)).where(
                    c.tenant_id == self.book.tenant_id, c.sub_account_id == self.sub_account.tenant_id,
                    c.created_at >= month)).scalar_one()
        return self._month_spend[month]

    def flush(self) -> None:
        self.book.flush()
        self.positions.flush()
        insert_rows(self.uow, agency_charges, self.rows)
        if self.item_rows:  # one UPDATE of the sub-account's items, joined to their agency prices as arrays
            source, params = unnest_arrays(usage_event_items, self.item_rows)
            self.uow.connection.execute(text(
                f"UPDATE usage_event_items AS i SET agency_cost = rows.agency_cost FROM {source} "
                "WHERE i.tenant_id = :tenant_id AND i.usage_event_id = rows.usage_event_id "
                "AND i.position = rows.position"), {**params, "tenant_id": self.sub_account.tenant_id})
        self.rows, self.item_rows = [], []
