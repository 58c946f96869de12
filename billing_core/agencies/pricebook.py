"""The agency's resale price book: multipliers over its own prices, per catalog scope, for every
sub-account or one. A change moves the catalog revision (a trigger), so the next charge sees it."""
from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert

from billing_core.agencies.commands import ResaleMultiplierRequest
from billing_core.agencies.resale import ResaleMultiplier
from billing_core.agencies.tables import resale_multipliers
from billing_core.agencies.tree import sub_account_of
from billing_core.db import UnitOfWork


def put_multiplier(uow: UnitOfWork, agency_id: str, command: ResaleMultiplierRequest) -> ResaleMultiplier:
    """Set the multiplier of one scope (replacing the one set before for the same scope) and commit.
    A sub-account that is not the agency's own is not found."""
    if command.subAccountId is not None:
        sub_account_of(uow, agency_id, command.subAccountId)
    c = resale_multipliers.c
    uow.connection.execute(
        insert(resale_multipliers).values(
            tenant_id=agency_id, id=uuid.uuid4(), sub_account_id=command.subAccountId, category=command.category,
            provider=command.provider, model=command.model, unit=command.unit, multiplier=command.multiplier,
            created_at=func.now())
        .on_conflict_do_update(
            index_elements=[c.tenant_id, func.coalesce(c.sub_account_id, ""), func.coalesce(c.category, ""),
                            func.coalesce(c.provider, ""), func.coalesce(c.model, ""), func.coalesce(c.unit, "")],
            set_={"multiplier": command.multiplier, "created_at": func.now()}))
    uow.commit()
    return ResaleMultiplier(command.subAccountId, (command.category, command.provider, command.model, command.unit),
                            command.multiplier)


def list_multipliers(uow: UnitOfWork, agency_id: str) -> list[ResaleMultiplier]:
    c = resale_multipliers.c
    return [ResaleMultiplier(r.sub_account_id, (r.category, r.provider, r.model, r.unit), r.multiplier)
            for r in uow.connection.execute(
                select(resale_multipliers).where(c.tenant_id == agency_id)
                .order_by(c.sub_account_id.nulls_first(), c.category.nulls_first(), c.provider.nulls_first(),
                          c.model.nulls_first(), c.unit.nulls_first()))]
