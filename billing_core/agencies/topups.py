"""An agency credits one of its prepaid sub-accounts (the API's POST /sub-accounts/<id>/topups and the
portal's form): a paid grant of the sub-account, no LAD receipt (the money came from the agency's
client, outside LAD), the agency's wallet untouched."""
from __future__ import annotations

from decimal import Decimal

from billing_core.agencies.tree import PREPAID, sub_account_of
from billing_core.db import UnitOfWork
from billing_core.errors import ValidationFailed
from billing_core.ledger import credits
from billing_core.ledger.commands import TopUpRequest


def top_up_sub_account(uow: UnitOfWork, agency_id: str, tenant_id: str, *, amount: Decimal, idempotency_key: str,
                       description: str | None, created_by: str | None) -> credits.CreditResult:
    """Credit the agency's own prepaid sub-account and commit (with anything the caller wrote in this
    transaction); a repeated key replays the first top-up. Another agency's sub-account, or any other
    tenant, is not found; an agency-funded one has no wallet to top up (400, field funding)."""
    found = sub_account_of(uow, agency_id, tenant_id)
    if found.funding != PREPAID:
        raise ValidationFailed("funding", f"sub-account {tenant_id} is funded by its agency: no wallet to top up")
    return credits.top_up(uow, tenant_id, TopUpRequest(amount=amount, idempotencyKey=idempotency_key,
                                                       description=description),
                          created_by=created_by, receipt=False)
