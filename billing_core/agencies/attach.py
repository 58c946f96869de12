"""The operator attaches an existing tenant to an agency as its sub-account (issue 21). The agency
itself can only create fresh tenants in its namespace; the operator may bring in one with history.

Any tenant can be attached, whatever its id: a sub-account's agency is read from the agencies' own
records (`agency_members`, keyed by the sub-account's id), never from its id. An `agency`-funded
sub-account has no balance of its own, so a tenant with money or holds in its wallet is attached
only as `prepaid` (its balance stays its own)."""
from __future__ import annotations

from decimal import Decimal

from billing_core.agencies.tree import (
    AGENCY,
    SubAccount,
    _refuse_a_balance,
    find_sub_account,
    is_agency,
    join,
)
from billing_core.db import UnitOfWork
from billing_core.errors import NotFound, SubAccountExists, TenantIsAgency, ValidationFailed


def attach(uow: UnitOfWork, agency_id: str, tenant_id: str, funding: str, spend_cap: Decimal | None) -> SubAccount:
    """Make `tenant_id` a sub-account of `agency_id` and commit. Refused: the tenant is the agency
    (400), the target is not an agency (404), the tenant is an agency itself (409 tenant_is_agency) or
    already a sub-account (409 sub_account_exists), or it has money or holds and would be
    agency-funded (409 sub_account_has_balance). Its past usage stays as charged; its charges from now
    on are at its agency's resale prices (moving the catalog revision: its cached prices go)."""
    if tenant_id == agency_id:
        raise ValidationFailed("tenantId", "a tenant cannot be its own sub-account")
    if "*" in tenant_id:  # `<agencyId>:*` owns the explicit resale rows for every sub-account
        raise ValidationFailed("tenantId", "a sub-account's id has no '*'")
    if not is_agency(uow, agency_id):
        raise NotFound(f"agency {agency_id} not found", {"field": "agencyId"})
    if is_agency(uow, tenant_id):
        raise TenantIsAgency(f"tenant {tenant_id} is an agency: one level only", {"tenantId": tenant_id})
    existing = find_sub_account(uow, tenant_id)
    if existing is not None:
        raise SubAccountExists(f"tenant {tenant_id} is already a sub-account of {existing.agency_id}",
                               {"tenantId": tenant_id, "agencyId": existing.agency_id})
    if funding == AGENCY:  # under the tenant's wallet lock, held until the row is in
        _refuse_a_balance(uow, tenant_id)
    row = join(uow, agency_id, tenant_id, funding, spend_cap)
    if row is None:  # attached by a concurrent request
        raise SubAccountExists(f"tenant {tenant_id} is already a sub-account of {agency_id}",
                               {"tenantId": tenant_id, "agencyId": agency_id})
    uow.commit()
    return row
