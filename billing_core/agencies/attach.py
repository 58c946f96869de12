"""The operator attaches an existing tenant to an agency as its sub-account (issue 21). The agency
itself can only create fresh tenants in its namespace; the operator may bring in one with history.

A sub-account is always named `<agencyId>:<name>`: its agency is read from its id everywhere (every
read of the tree filters on the agency's tenant_id, so a tree lives together), so only a tenant in the
agency's namespace can be attached. An `agency`-funded sub-account has no balance of its own, so a
tenant with money or holds in its wallet is attached only as `prepaid` (its balance stays its own)."""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func
from sqlalchemy.dialects.postgresql import insert

from billing_core.agencies.tables import sub_accounts
from billing_core.agencies.tree import (
    AGENCY,
    NAME,
    SubAccount,
    _refuse_a_balance,
    _sub_account,
    agency_of,
    find_sub_account,
    is_agency,
)
from billing_core.db import UnitOfWork
from billing_core.errors import NotFound, SubAccountExists, TenantIsAgency, ValidationFailed


def attach(uow: UnitOfWork, agency_id: str, tenant_id: str, funding: str, spend_cap: Decimal | None) -> SubAccount:
    """Make `tenant_id` a sub-account of `agency_id` and commit. Refused: the tenant is the agency
    (400), the target is not an agency (404), the tenant is an agency itself (409 tenant_is_agency) or
    already a sub-account (409 sub_account_exists), its id is outside the agency's namespace (400), or
    it has money or holds and would be agency-funded (409 sub_account_has_balance). Its past usage
    stays as charged; its charges from now on are at its agency's resale prices."""
    if tenant_id == agency_id:
        raise ValidationFailed("tenantId", "a tenant cannot be its own sub-account")
    if not is_agency(uow, agency_id):
        raise NotFound(f"agency {agency_id} not found", {"field": "agencyId"})
    if is_agency(uow, tenant_id):
        raise TenantIsAgency(f"tenant {tenant_id} is an agency: one level only", {"tenantId": tenant_id})
    existing = find_sub_account(uow, tenant_id)
    if existing is not None:
        raise SubAccountExists(f"tenant {tenant_id} is already a sub-account of {existing.agency_id}",
                               {"tenantId": tenant_id, "agencyId": existing.agency_id})
    if agency_of(tenant_id) != agency_id or not NAME.fullmatch(tenant_id[len(agency_id) + 1:]):
        raise ValidationFailed("tenantId", f"a sub-account of {agency_id} is named {agency_id}:<name>")
    if funding == AGENCY:  # under the tenant's wallet lock, held until the row is in
        _refuse_a_balance(uow, tenant_id)
    row = uow.connection.execute(
        insert(sub_accounts).values(tenant_id=agency_id, sub_account_id=tenant_id, funding=funding,
                                    spend_cap=spend_cap, created_at=func.now(), updated_at=func.now())
        .on_conflict_do_nothing().returning(*sub_accounts.c)).one_or_none()
    if row is None:  # attached by a concurrent request
        raise SubAccountExists(f"tenant {tenant_id} is already a sub-account of {agency_id}",
                               {"tenantId": tenant_id, "agencyId": agency_id})
    uow.commit()
    return _sub_account(row)
