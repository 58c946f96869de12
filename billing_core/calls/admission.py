"""Admitting a call: an active hold is a call slot. Whether a new hold may open is decided under the
wallet's lock, in the hold's own transaction (holds.reserve), so simultaneous requests are counted one
after another and never exceed the plan: 100 requests against a limit of 10 admit exactly 10.

A wallet whose balance is below zero (beyond its overdraft, if it has one) is in debt and frozen for
new calls (402 insufficient_balance, reason in_debt); running calls keep settling, and any credit
repays the debt first.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection

from billing_core import money
from billing_core.agencies.slots import check_agency_slots
from billing_core.calls.plans import CallPlan, load_plan, plan_from_row
from billing_core.calls.tables import call_plans
from billing_core.errors import ConcurrencyLimit, InsufficientBalance
from billing_core.ledger.book import WalletBook
from billing_core.ledger.model import HoldStatus
from billing_core.lifecycle.tables import reservations


@dataclass(frozen=True)
class Concurrency:
    limit: int | None  # the plan's base limit (None: unlimited)
    burst_limit: int | None
    active: int
    remaining: int | None  # slots left, burst slots included (None: unlimited)


@dataclass(frozen=True)
class Admission:
    burst_multiplier: Decimal | None  # set when the call takes a burst slot
    concurrency: Concurrency


def concurrency(plan: CallPlan, active: int) -> Concurrency:
    ceiling = plan.ceiling
    return Concurrency(plan.max_concurrent_calls,
                       plan.burst_limit if plan.max_concurrent_calls is not None else None, active,
                       None if ceiling is None else max(0, ceiling - active))


def count_active(connection: Connection, tenant_id: str, feature_key: str | None = None, *,
                 live_only: bool = False) -> int:
    """Active holds of the tenant (of one feature). Under the wallet's lock after expiry.end_due,
    every active hold is a running call (a due hold kept for a pending charge still is); a read
    without the lock leaves out holds past their TTL, which the next writer expires."""
    query = select(func.count()).select_from(reservations).where(
        reservations.c.tenant_id == tenant_id, reservations.c.status == HoldStatus.ACTIVE,
        reservations.c.sub_account_id.is_(None))  # an agency's hold backing a sub-account's call is not its own
    if feature_key is not None:
        query = query.where(reservations.c.feature_key == feature_key)
    if live_only:
        query = query.where(reservations.c.expires_at > func.now())
    return int(connection.execute(query).scalar_one())


# the plan (its columns NULL when the tenant has none) and the live active holds, in one round trip: an
# aggregate over the tenant's (at most one) plan row answers one row either way, where an outer join from
# a constant would be a join Citus cannot route (the statement check's recurring-outer-join rule)
_PLAN_AND_ACTIVE = select(
    *[func.array_agg(c)[1].label(c.name) for c in call_plans.c if c.name != "tenant_id"],
    func.array_agg(call_plans.c.tenant_id)[1].label("planned"),
    select(func.count()).select_from(reservations)
    .where(reservations.c.tenant_id == bindparam("t"), reservations.c.status == HoldStatus.ACTIVE,
           reservations.c.expires_at > func.now())
    .scalar_subquery().label("active"),
).where(call_plans.c.tenant_id == bindparam("t"))


def read_concurrency(connection: Connection, tenant_id: str) -> Concurrency:
    """The tenant's slots now, read without the wallet's lock (answers, pages, entitlement): the plan and
    the count in one statement (GET /wallet's round trips, issue 23)."""
    row = connection.execute(_PLAN_AND_ACTIVE, {"t": tenant_id}).one()
    return concurrency(plan_from_row(row) if row.planned is not None else CallPlan(), int(row.active))


def at_limit(connection: Connection, tenant_id: str, feature_key: str) -> bool:
    """Whether a new call of the feature would be refused for want of a slot now (a read, no lock)."""
    plan = load_plan(connection, tenant_id)
    ceiling = plan.ceiling
    if ceiling is not None and count_active(connection, tenant_id, live_only=True) >= ceiling:
        return True
    feature_limit = plan.feature_limits.get(feature_key)
    return feature_limit is not None and count_active(connection, tenant_id, feature_key, live_only=True) >= feature_limit


def refuse_if_in_debt(in_debt: bool, balance: Decimal, wallet_id: object) -> None:
    """A wallet in debt (ledger.model.owes) is frozen for new calls: 402, reason in_debt."""
    if in_debt:
        raise InsufficientBalance("the wallet is in debt; new calls are refused until it is repaid",
                                  {"reason": "in_debt", "balance": money.format_decimal(balance),
                                   "walletId": str(wallet_id)})


def admit(book: WalletBook, feature_key: str) -> Admission:
    """Decide a new call under the book's wallet lock (what was due has ended and been flushed):
    refused when the wallet is in debt (402) or every slot is taken (429 concurrency_limit with the
    limit and the active count); a call above the base limit takes a burst slot at the plan's
    multiplier. Burst slots are only given once the base slots are all taken."""
    refuse_if_in_debt(book.in_debt, book.balance, book.wallet.id)
    connection = book.uow.connection
    plan = load_plan(connection, book.tenant_id)
    active = count_active(connection, book.tenant_id)  # one count on the active-holds index
    ceiling = plan.ceiling
    if ceiling is not None and active >= ceiling:
        raise ConcurrencyLimit("every call slot is taken", {"limit": ceiling, "active": active})
    feature_limit = plan.feature_limits.get(feature_key)
    if feature_limit is not None:
        feature_active = count_active(connection, book.tenant_id, feature_key)
        if feature_active >= feature_limit:
            raise ConcurrencyLimit(f"every call slot of {feature_key} is taken",
                                   {"limit": feature_limit, "active": feature_active, "featureKey": feature_key})
    # in an agency's tree, the agency's plan bounds the calls of the whole tree (agencies/slots.py)
    check_agency_slots(book.uow, book.tenant_id)
    burst = plan.max_concurrent_calls is not None and active >= plan.max_concurrent_calls
    return Admission(plan.burst_multiplier if burst else None, concurrency(plan, active + 1))
