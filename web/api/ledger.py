from __future__ import annotations

from typing import Any, Literal

from flask import Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from billing_core.errors import NotFound, ValidationFailed
from billing_core.ledger import allocations, credits, expiry, verification
from billing_core.ledger.allocations import AllocationName, AllocationRequest
from billing_core.ledger.commands import AdjustmentRequest, RefundRequest, TopUpRequest, WalletSettingsRequest
from billing_core.ledger.wallets import change_settings
from web import representations as show
from web import schemas
from web.api.routing import billing, documented, ok
from web.auth import ADMIN, VIEW, authenticate, tenant_for
from web.limits import rate_limited
from web.parsing import json_body, parse, parse_query, time_bound, with_idempotency_header
from web.representations import amount, timestamp
from web.runtime import read_unit_of_work, unit_of_work


class AllocationOut(BaseModel):
    tenantId: str
    name: str
    amount: schemas.DecimalString
    kind: Literal["promotional", "paid"]
    period: Literal["month"]
    expiresAtPeriodEnd: bool
    lastPeriodGranted: schemas.Timestamp | None
    createdAt: schemas.Timestamp
    updatedAt: schemas.Timestamp


class AllocationResponse(BaseModel):
    success: Literal[True]
    allocation: AllocationOut


class AllocationsResponse(BaseModel):
    success: Literal[True]
    allocations: list[AllocationOut]


@billing.get("/wallet")
@documented({200: schemas.WalletResponse}, 403, query=schemas.TenantQuery)
@rate_limited(VIEW)
def get_wallet_balance() -> Response:
    """Balances and the credit grants behind them (grants and holds past their expiry end first)."""
    principal = authenticate()
    tenant_id = tenant_for(principal, parse_query(schemas.TenantQuery).tenantId)
    with unit_of_work() as uow:
        wallet, grants = expiry.end_due_and_read_wallet(uow, tenant_id)
    return ok(wallet=show.wallet(wallet, grants))


@billing.post("/topup")
@documented({200: schemas.CreditResponse}, 403, 409, 413, json=TopUpRequest)
@rate_limited(ADMIN)
def post_topup() -> Response:
    """Add a credit grant: paid or promotional, optionally expiring, with a draw priority."""
    principal = authenticate(ADMIN)
    command = parse(TopUpRequest, with_idempotency_header(json_body()))
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        result = credits.top_up(uow, tenant_id, command, created_by=principal.subject)
    return credit_answer(result)


def credit_answer(result: credits.CreditResult) -> Response:
    """A top-up, refund or adjustment: its ledger entry, and the grant it created if any."""
    return ok(transaction=show.transaction(result.entry), grant=show.grant(result.grant) if result.grant else None,
              replayed=result.replayed)


@billing.get("/transactions")
@documented({200: schemas.TransactionsResponse}, 403, query=schemas.TransactionsQuery)
@rate_limited(VIEW)
def get_transactions() -> Response:
    principal = authenticate(VIEW)
    query = parse_query(schemas.TransactionsQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    with read_unit_of_work() as uow:
        entries, next_cursor = verification.list_entries(
            uow, tenant_id, start=time_bound(query.from_, "from", end=False),
            end=time_bound(query.to, "to", end=True), entry_type=query.type, limit=query.limit, cursor=query.cursor,
        )
    return ok(transactions=[show.transaction(e) for e in entries], nextCursor=next_cursor)


@billing.get("/ledger/verify")
@documented({200: schemas.VerifyResponse}, 403, query=schemas.TenantQuery)
@rate_limited(ADMIN)
def get_ledger_verification() -> Response:
    authenticate(ADMIN)
    with unit_of_work() as uow:
        result = verification.verify(uow, parse_query(schemas.TenantQuery).tenantId)
    return ok(**show.verification(result))


@billing.post("/refunds")
@documented({200: schemas.CreditResponse}, 403, 404, 409, 422, json=RefundRequest)
@rate_limited(ADMIN)
def post_refund() -> Response:
    """Credit back all or part of a debit (never more than it took, over all its refunds)."""
    principal = authenticate(ADMIN)
    command = parse(RefundRequest, with_idempotency_header(json_body()))
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        result = credits.refund(uow, tenant_id, command, created_by=principal.subject)
    return credit_answer(result)


@billing.post("/adjustments")
@documented({200: schemas.CreditResponse}, 402, 403, 409, json=AdjustmentRequest)
@rate_limited(ADMIN)
def post_adjustment() -> Response:
    """A signed manual correction with a mandatory reason."""
    principal = authenticate(ADMIN)
    command = parse(AdjustmentRequest, with_idempotency_header(json_body()))
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        result = credits.adjust(uow, tenant_id, command, created_by=principal.subject)
    return credit_answer(result)


@billing.patch("/wallet")
@documented({200: schemas.WalletSettingsResponse}, 403, json=WalletSettingsRequest)
@rate_limited(ADMIN)
def patch_wallet() -> Response:
    """Block or unblock the wallet, set its overdraft limit, clear a clawback flag. Blocked wallets
    refuse charges and reservations (403 wallet_blocked); top-ups still work."""
    principal = authenticate(ADMIN)
    command = parse(WalletSettingsRequest, json_body())
    tenant_id = tenant_for(principal, command.tenantId)
    with unit_of_work() as uow:
        wallet = change_settings(uow, tenant_id, status=command.status, overdraft_limit=command.overdraftLimit,
                                 clear_flag=bool(command.clearFlag))
    return ok(wallet=show.wallet(wallet))


def show_allocation(view: allocations.AllocationView) -> dict[str, Any]:
    a = view.allocation
    return {"tenantId": a.tenant_id, "name": a.name, "amount": amount(a.amount), "kind": a.kind, "period": a.period,
            "expiresAtPeriodEnd": a.expires_at_period_end, "lastPeriodGranted": timestamp(view.last_period_granted),
            "createdAt": timestamp(a.created_at), "updatedAt": timestamp(a.updated_at)}


def _name(value: str) -> str:
    try:
        return TypeAdapter(AllocationName).validate_python(value)
    except ValidationError:
        raise ValidationFailed("name", "must be 1-64 letters, digits or ._:-") from None


@billing.put("/allocations/<name>")
@documented({200: AllocationResponse}, 403, json=AllocationRequest)
@rate_limited(ADMIN)
def put_allocation(name: str) -> Response:
    """A recurring grant: each month (00:05 UTC on the 1st, and at once for the current month when
    created) the tenant gets `amount` once, expiring at the month's end unless expiresAtPeriodEnd
    is false. A change applies from the next month."""
    principal = authenticate(ADMIN)
    command = parse(AllocationRequest, json_body())
    tenant_id = tenant_for(principal, command.tenantId)
    name = _name(name)
    with unit_of_work() as uow:
        allocations.put_allocation(uow, tenant_id, name, command)
        view = allocations.list_allocations(uow, tenant_id, name)[0]
    return ok(allocation=show_allocation(view))


@billing.get("/allocations")
@documented({200: AllocationsResponse}, 403, query=schemas.TenantQuery)
@rate_limited(ADMIN)
def get_allocations() -> Response:
    principal = authenticate(ADMIN)
    tenant_id = tenant_for(principal, parse_query(schemas.TenantQuery).tenantId)
    with unit_of_work() as uow:
        found = allocations.list_allocations(uow, tenant_id)
    return ok(allocations=[show_allocation(v) for v in found])


@billing.get("/allocations/<name>")
@documented({200: AllocationResponse}, 403, 404, query=schemas.TenantQuery)
@rate_limited(ADMIN)
def get_allocation(name: str) -> Response:
    principal = authenticate(ADMIN)
    tenant_id = tenant_for(principal, parse_query(schemas.TenantQuery).tenantId)
    with unit_of_work() as uow:
        found = allocations.list_allocations(uow, tenant_id, _name(name))
    if not found:
        raise NotFound(f"no allocation {name}")
    return ok(allocation=show_allocation(found[0]))


@billing.delete("/allocations/<name>")
@documented({200: AllocationsResponse}, 403, 404, query=schemas.TenantQuery)
@rate_limited(ADMIN)
def delete_allocation(name: str) -> Response:
    """Stop an allocation from next month on; what it granted stays until it expires."""
    principal = authenticate(ADMIN)
    tenant_id = tenant_for(principal, parse_query(schemas.TenantQuery).tenantId)
    with unit_of_work() as uow:
        if not allocations.delete_allocation(uow, tenant_id, _name(name)):
            raise NotFound(f"no allocation {name}")
        remaining = allocations.list_allocations(uow, tenant_id)
    return ok(allocations=[show_allocation(v) for v in remaining])
