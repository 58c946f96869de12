"""Concurrency across an agency's tree: a sub-account's active calls count toward its agency's call
plan too. Counted under the agency's wallet lock (taken after the sub-account's: the one lock order),
which every admission in the tree holds, so two calls never take the agency's last slot together."""
from __future__ import annotations

from sqlalchemy import func, select

from billing_core.agencies.tables import sub_accounts
from billing_core.agencies.tree import find_sub_account, is_agency
from billing_core.calls.plans import load_plan
from billing_core.db import UnitOfWork
from billing_core.errors import ConcurrencyLimit
from billing_core.ledger.model import HoldStatus
from billing_core.ledger.tables import wallets
from billing_core.ledger.wallets import ensure_wallet
from billing_core.lifecycle.tables import reservations


def check_agency_slots(uow: UnitOfWork, tenant_id: str) -> None:
    """Under the tenant's wallet lock: refuse a new call (429 concurrency_limit, `level: agency`) when
    the agency's plan has a ceiling and the active calls of the whole tree (the agency's own and all its
    sub-accounts') reach it. Tenants outside any tree pass."""
    sub = find_sub_account(uow, tenant_id)
    if sub is not None:
        agency = sub.agency_id
        ensure_wallet(uow, agency)
        uow.connection.execute(select(wallets.c.id).where(wallets.c.tenant_id == agency).with_for_update())
    elif is_agency(uow, tenant_id):
        agency = tenant_id  # its own wallet is the one locked
    else:
        return
    ceiling = load_plan(uow.connection, agency).ceiling
    if ceiling is None:
        return
    tree = [agency, *uow.connection.execute(
        select(sub_accounts.c.sub_account_id).where(sub_accounts.c.tenant_id == agency)).scalars()]
    # each tenant of the tree on its own (a sub-account is another tenant: another shard under Citus);
    # a backing hold is its sub-account's call, counted there
    active = sum(int(uow.connection.execute(select(func.count()).select_from(reservations).where(
        reservations.c.tenant_id == member, reservations.c.status == HoldStatus.ACTIVE,
        reservations.c.sub_account_id.is_(None))).scalar_one())
        for member in tree)
    if active >= ceiling:
        raise ConcurrencyLimit("every call slot of the agency is taken",
                               {"limit": ceiling, "active": active, "level": "agency"})
