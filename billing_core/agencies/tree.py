"""Agencies and their sub-accounts: one level. A sub-account an agency creates is named
`<agencyId>:<name>`; one the operator attaches keeps its own id. Either way its agency comes from the
agencies' records, never from its id: `agency_members` (keyed by the sub-account's own tenant_id, one
primary-key read) names it, and the tree's rows (keyed by the agency's tenant_id) say the rest."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import exists, func, select, update
from sqlalchemy.dialects.postgresql import insert

from billing_core.agencies.tables import agencies, agency_members, sub_accounts
from billing_core.catalog.revision import bump_catalog_revision
from billing_core.db import UnitOfWork
from billing_core.errors import NotFound, SubAccountExists, ValidationFailed
from billing_core.ledger.tables import ledger_entries, wallets
from billing_core.usage.tables import usage_events

NAME = re.compile(r"[A-Za-z0-9._-]{1,32}")
PREPAID, AGENCY = "prepaid", "agency"


@dataclass(frozen=True)
class SubAccount:
    agency_id: str
    tenant_id: str
    funding: str
    spend_cap: Decimal | None
    created_at: datetime


def agency_of(uow: UnitOfWork, tenant_id: str) -> str | None:
    """The agency the tenant is a sub-account of, or None: one primary-key read on its own records."""
    return uow.connection.execute(select(agency_members.c.agency_id).where(
        agency_members.c.tenant_id == tenant_id)).scalar_one_or_none()


def is_agency(uow: UnitOfWork, tenant_id: str) -> bool:
    return uow.connection.execute(
        select(exists().where(agencies.c.tenant_id == tenant_id))).scalar_one()


def find_sub_account(uow: UnitOfWork, tenant_id: str) -> SubAccount | None:
    """The tenant as a sub-account, if it is one (one read for any other tenant)."""
    agency = agency_of(uow, tenant_id)
    if agency is None:
        return None
    row = uow.connection.execute(select(sub_accounts).where(
        sub_accounts.c.tenant_id == agency, sub_accounts.c.sub_account_id == tenant_id)).one_or_none()
    return None if row is None else _sub_account(row)


def sub_account_of(uow: UnitOfWork, agency_id: str, tenant_id: str) -> SubAccount:
    """The agency's own sub-account `tenant_id`; anything else is not found (another agency's, or
    no sub-account at all: an agency cannot tell those apart)."""
    found = find_sub_account(uow, tenant_id)
    if found is None or found.agency_id != agency_id:
        raise NotFound(f"sub-account {tenant_id} not found")
    return found


def list_sub_accounts(uow: UnitOfWork, agency_id: str) -> list[SubAccount]:
    return [_sub_account(r) for r in uow.connection.execute(
        select(sub_accounts).where(sub_accounts.c.tenant_id == agency_id).order_by(sub_accounts.c.sub_account_id))]


def mark_reseller(uow: UnitOfWork, tenant_id: str, reseller: bool) -> None:
    """Make a tenant an agency (or stop it being one: its sub-accounts stay). A sub-account cannot
    be an agency: one level only. The caller commits."""
    if reseller:
        if find_sub_account(uow, tenant_id) is not None:
            raise ValidationFailed("reseller", "a sub-account cannot be an agency")
        uow.connection.execute(insert(agencies).values(tenant_id=tenant_id, created_at=func.now())
                               .on_conflict_do_nothing())
    else:
        uow.connection.execute(agencies.delete().where(agencies.c.tenant_id == tenant_id))


def create_sub_account(uow: UnitOfWork, agency_id: str, name: str, funding: str,
                       spend_cap: Decimal | None) -> SubAccount:
    """Create `<agencyId>:<name>` under the agency and commit. Refused (409 sub_account_exists) when
    that tenant already has a wallet, a usage event or a ledger entry: an agency cannot claim a
    tenant with history."""
    if not is_agency(uow, agency_id):
        raise NotFound(f"tenant {agency_id} is not an agency")
    if not NAME.fullmatch(name):
        raise ValidationFailed("name", "1 to 32 of A-Za-z0-9._- (no colon)")
    tenant_id = f"{agency_id}:{name}"
    history = uow.connection.execute(select(
        exists().where(wallets.c.tenant_id == tenant_id)
        | exists().where(usage_events.c.tenant_id == tenant_id)
        | exists().where(ledger_entries.c.tenant_id == tenant_id)
        | exists().where(agency_members.c.tenant_id == tenant_id)
        | exists().where(agencies.c.tenant_id == tenant_id))).scalar_one()
    if history:
        raise SubAccountExists(f"tenant {tenant_id} already exists", {"tenantId": tenant_id})
    row = join(uow, agency_id, tenant_id, funding, spend_cap)
    if row is None:  # created by a concurrent request
        raise SubAccountExists(f"tenant {tenant_id} already exists", {"tenantId": tenant_id})
    uow.commit()
    return row


def join(uow: UnitOfWork, agency_id: str, tenant_id: str, funding: str, spend_cap: Decimal | None) -> SubAccount | None:
    """Record `tenant_id` as the agency's sub-account at both ends (its membership, keyed by its own id,
    and the tree's row, keyed by the agency's); None, with nothing written, when it already belongs to an
    agency (the membership's key: at most one). The caller commits."""
    member = uow.connection.execute(
        insert(agency_members).values(tenant_id=tenant_id, agency_id=agency_id, created_at=func.now())
        .on_conflict_do_nothing().returning(agency_members.c.tenant_id)).scalar_one_or_none()
    if member is None:
        return None
    row = uow.connection.execute(
        insert(sub_accounts).values(tenant_id=agency_id, sub_account_id=tenant_id, funding=funding,
                                    spend_cap=spend_cap, created_at=func.now(), updated_at=func.now())
        .returning(*sub_accounts.c)).one()
    bump_catalog_revision(uow)  # a sub-account's prices are its agency's: cached prices are stale now
    return _sub_account(row)


def update_sub_account(uow: UnitOfWork, agency_id: str, tenant_id: str, *, funding: str | None,
                       spend_cap: Decimal | None, clear_cap: bool) -> SubAccount:
    found = sub_account_of(uow, agency_id, tenant_id)
    if funding == AGENCY and found.funding != AGENCY:
        _refuse_a_balance(uow, tenant_id)
    values: dict[str, object] = {"updated_at": func.now()}
    if funding is not None:
        values["funding"] = funding
    if spend_cap is not None or clear_cap:
        values["spend_cap"] = spend_cap
    row = uow.connection.execute(update(sub_accounts).where(
        sub_accounts.c.tenant_id == agency_id, sub_accounts.c.sub_account_id == tenant_id)
        .values(**values).returning(*sub_accounts.c)).one()
    bump_catalog_revision(uow)
    uow.commit()
    return _sub_account(row)


def _refuse_a_balance(uow: UnitOfWork, tenant_id: str) -> None:
    """An agency-funded sub-account has no balance of its own: a tenant with money or live holds in its
    wallet cannot become one (409 sub_account_has_balance). Checked under the tenant's wallet lock (the
    tree's lock order: the sub-account's first), held until the caller commits."""
    from billing_core import money
    from billing_core.errors import SubAccountHasBalance

    wallet = uow.connection.execute(select(wallets.c.current_balance, wallets.c.reserved_balance).where(
        wallets.c.tenant_id == tenant_id).with_for_update()).one_or_none()
    if wallet is not None and (wallet.current_balance != 0 or wallet.reserved_balance != 0):
        raise SubAccountHasBalance(
            f"tenant {tenant_id} has a balance: an agency-funded sub-account has none (keep it prepaid)",
            {"tenantId": tenant_id, "balance": money.format_decimal(wallet.current_balance),
             "reserved": money.format_decimal(wallet.reserved_balance)})


def _sub_account(row: object) -> SubAccount:
    r = row._mapping  # type: ignore[attr-defined]
    return SubAccount(r["tenant_id"], r["sub_account_id"], r["funding"], r["spend_cap"], r["created_at"])
