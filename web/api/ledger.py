"""The wallet and its ledger under /api/billing: balances and grants, top-ups, refunds, adjustments,
wallet settings, the ledger's entries and its verification, and recurring allocations."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from flask import Response
from pydantic import Field, TypeAdapter, ValidationError

from billing_core.agencies import tree
from billing_core.calls import admission, plans
from billing_core.calls.admission import Concurrency
from billing_core.calls.commands import PLAN_FIELDS
from billing_core.calls.plans import CallPlan
from billing_core.documents import parties
from billing_core.errors import NotFound, ValidationFailed
from billing_core.fields import TenantId
from billing_core.ledger import allocations, credits, expiry, verification
from billing_core.ledger.allocations import AllocationName, AllocationRequest
from billing_core.ledger.commands import AdjustmentRequest, RefundRequest, TopUpRequest, WalletSettingsRequest
from billing_core.ledger.model import Grant, LedgerEntry, Wallet
from billing_core.ledger.wallets import change_settings
from web.api.answers import Answer, DecimalString, Query, TenantQuery, TimeBound, Timestamp, Uuid, ok
from web.api.concurrency import ConcurrencyOut, concurrency_out
from web.api.routing import billing, documented
from web.auth import ADMIN, VIEW, authenticate, tenant_for
from web.limits import rate_limited
from web.parsing import json_body, parse, parse_query, time_bound, with_idempotency_header
from web.runtime import read_unit_of_work, unit_of_work

EntryType = Literal["topup", "debit", "refund", "adjustment", "expiry", "hold", "hold_release", "correction"]


class TransactionsQuery(Query):
    from_: Annotated[TimeBound | None, Field(alias="from")] = None
    to: TimeBound | None = None
    type: EntryType | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    cursor: Annotated[str, Field(max_length=200)] | None = None
    tenantId: TenantId | None = None


# --- response models and representations ----------------------------------------------------------

class CallPlanOut(Answer):
    maxConcurrentCalls: int | None
    burstLimit: int | None
    burstMultiplier: DecimalString
    callGraceLimit: DecimalString | None
    settlementPolicy: Literal["grace", "strict"]
    featureLimits: dict[str, int]


class WalletOut(Answer):
    id: Uuid
    tenantId: str
    currentBalance: DecimalString
    reservedBalance: DecimalString
    availableBalance: DecimalString
    overdraftLimit: DecimalString
    currency: str
    status: Literal["active", "blocked"]
    flagged: bool
    flagReason: str | None


class GrantOut(Answer):
    """A credit grant; `debt` is what an overdraft or clawback took beyond the credits (negative)."""
    id: Uuid
    kind: Literal["paid", "promotional", "debt"]
    amount: DecimalString
    remaining: DecimalString
    priority: int
    expiresAt: Timestamp | None
    source: str
    createdAt: Timestamp


class WalletWithGrants(WalletOut):
    grants: list[GrantOut]
    calls: ConcurrencyOut
    inDebt: bool


class WalletResponse(Answer):
    success: Literal[True]
    wallet: WalletWithGrants


class TaxOut(Answer):
    """How the tenant's credit purchases are taxed on their receipts (none set: exempt)."""
    mode: Literal["rate", "reverse_charge", "exempt"]
    rate: DecimalString | None = Field(description="a fraction: 0.19 is 19%")
    label: str | None
    wording: str | None = Field(description="what a receipt says about tax it does not charge")


class WalletWithPlan(WalletOut):
    calls: ConcurrencyOut
    callPlan: CallPlanOut
    inDebt: bool


class WalletSettingsResponse(Answer):
    success: Literal[True]
    wallet: WalletWithPlan
    tax: TaxOut


class TransactionOut(Answer):
    id: Uuid
    type: EntryType
    amount: DecimalString
    balanceBefore: DecimalString
    balanceAfter: DecimalString
    reservedChange: DecimalString
    description: str | None
    usageEventId: Uuid | None
    reservationId: Uuid | None
    grantId: Uuid | None
    relatedTransactionId: Uuid | None
    createdAt: Timestamp


class CreditResponse(Answer):
    """A top-up or positive adjustment also returns the grant it created."""
    success: Literal[True]
    transaction: TransactionOut
    grant: GrantOut | None = None


class TransactionsResponse(Answer):
    success: Literal[True]
    transactions: list[TransactionOut]
    nextCursor: str | None


class VerifyResponse(Answer):
    success: Literal[True]
    ok: bool
    walletsChecked: int
    mismatches: list[dict[str, Any]]


class AllocationOut(Answer):
    tenantId: str
    name: str
    amount: DecimalString
    kind: Literal["promotional", "paid"]
    period: Literal["month"]
    expiresAtPeriodEnd: bool
    lastPeriodGranted: Timestamp | None
    createdAt: Timestamp
    updatedAt: Timestamp


class AllocationResponse(Answer):
    success: Literal[True]
    allocation: AllocationOut


class AllocationsResponse(Answer):
    success: Literal[True]
    allocations: list[AllocationOut]


def _wallet_fields(w: Wallet) -> dict[str, Any]:
    return {"id": w.id, "tenantId": w.tenant_id, "currentBalance": w.current_balance,
            "reservedBalance": w.reserved_balance, "availableBalance": w.available_balance,
            "overdraftLimit": w.overdraft_limit, "currency": w.currency, "status": w.status,
            "flagged": w.flagged_at is not None, "flagReason": w.flag_reason}


def wallet_out(w: Wallet) -> WalletOut:
    return WalletOut(**_wallet_fields(w))


def call_plan_out(p: CallPlan) -> CallPlanOut:
    return CallPlanOut(maxConcurrentCalls=p.max_concurrent_calls, burstLimit=p.burst_limit,
                       burstMultiplier=p.burst_multiplier, callGraceLimit=p.call_grace_limit,
                       settlementPolicy=p.settlement_policy, featureLimits=p.feature_limits)


def wallet_with_grants(w: Wallet, grants: list[Grant], calls: Concurrency) -> WalletWithGrants:
    return WalletWithGrants(**_wallet_fields(w), grants=[grant_out(g) for g in grants], calls=concurrency_out(calls),
                            inDebt=w.in_debt)


def grant_out(g: Grant) -> GrantOut:
    return GrantOut(id=g.id, kind=g.kind, amount=g.amount, remaining=g.remaining, priority=g.priority,
                    expiresAt=g.expires_at, source=g.source, createdAt=g.created_at)


def transaction_out(e: LedgerEntry) -> TransactionOut:
    return TransactionOut(
        id=e.id, type=e.entry_type, amount=e.amount, balanceBefore=e.balance_before, balanceAfter=e.balance_after,
        reservedChange=e.reserved_change, description=e.description, usageEventId=e.usage_event_id,
        reservationId=e.reservation_id, grantId=e.grant_id, relatedTransactionId=e.related_entry_id,
        createdAt=e.created_at)


def verification_fields(v: verification.Verification) -> dict[str, Any]:
    return {"ok": v.ok, "walletsChecked": v.wallets_checked, "mismatches": v.mismatches}


def allocation_out(view: allocations.AllocationView) -> AllocationOut:
    a = view.allocation
    return AllocationOut(tenantId=a.tenant_id, name=a.name, amount=a.amount, kind=a.kind, period=a.period,
                         expiresAtPeriodEnd=a.expires_at_period_end, lastPeriodGranted=view.last_period_granted,
                         createdAt=a.created_at, updatedAt=a.updated_at)


# --- routes ---------------------------------------------------------------------------------------


@billing.get("/wallet")
@documented({200: WalletResponse}, 404, 403, query=TenantQuery)
@rate_limited(VIEW)
def get_wallet_balance() -> Response:
    """Balances and the credit grants behind them (grants and holds past their expiry end first)."""
    principal = authenticate()
    tenant_id = tenant_for(principal, parse_query(TenantQuery).tenantId)
    with unit_of_work() as uow:
        # first, in the transaction end_due_and_read_wallet commits: no second transaction after it (the
        # live count leaves out holds past their TTL, so ending them does not change it)
        calls = admission.read_concurrency(uow.connection, tenant_id)
        wallet, grants = expiry.end_due_and_read_wallet(uow, tenant_id)
    return ok(WalletResponse, wallet=wallet_with_grants(wallet, grants, calls))


@billing.post("/topup")
@documented({200: CreditResponse}, 404, 403, 409, 413, json=TopUpRequest)
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
    return ok(CreditResponse, transaction=transaction_out(result.entry),
              grant=grant_out(result.grant) if result.grant else None, replayed=result.replayed)


@billing.get("/transactions")
@documented({200: TransactionsResponse}, 404, 403, query=TransactionsQuery)
@rate_limited(VIEW)
def get_transactions() -> Response:
    principal = authenticate(VIEW)
    query = parse_query(TransactionsQuery)
    tenant_id = tenant_for(principal, query.tenantId)
    with read_unit_of_work() as uow:
        entries, next_cursor = verification.list_entries(
            uow, tenant_id, start=time_bound(query.from_, "from", end=False),
            end=time_bound(query.to, "to", end=True), entry_type=query.type, limit=query.limit, cursor=query.cursor,
        )
    return ok(TransactionsResponse, transactions=[transaction_out(e) for e in entries], nextCursor=next_cursor)


@billing.get("/ledger/verify")
@documented({200: VerifyResponse}, 403, query=TenantQuery)
@rate_limited(ADMIN)
def get_ledger_verification() -> Response:
    authenticate(ADMIN)
    with unit_of_work() as uow:
        result = verification.verify(uow, parse_query(TenantQuery).tenantId)
    return ok(VerifyResponse, **verification_fields(result))


@billing.post("/refunds")
@documented({200: CreditResponse}, 403, 404, 409, 422, json=RefundRequest)
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
@documented({200: CreditResponse}, 404, 402, 403, 409, json=AdjustmentRequest)
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
@documented({200: WalletSettingsResponse}, 404, 403, json=WalletSettingsRequest)
@rate_limited(ADMIN)
def patch_wallet() -> Response:
    """Block or unblock the wallet, set its overdraft limit, clear a clawback flag, make the tenant an
    agency (`reseller`: it may create sub-accounts and resell to them), set the tenant's
    tax treatment (`tax`: a rate with its label, reverse charge, or exempt) and its call plan (concurrency
    limits, burst, grace, settlement policy). Blocked wallets refuse charges and reservations
    (403 wallet_blocked); top-ups still work."""
    principal = authenticate(ADMIN)
    command = parse(WalletSettingsRequest, json_body())
    tenant_id = tenant_for(principal, command.tenantId)
    if command.model_fields_set & PLAN_FIELDS:
        with unit_of_work() as uow:  # checked before the wallet's settings change: refused, it changes nothing
            plans.set_plan(uow, tenant_id, command)
    with unit_of_work() as uow:
        if command.tax is not None:
            parties.set_tax_treatment(uow, tenant_id, command.tax)  # committed with the wallet's settings
        if command.reseller is not None:
            tree.mark_reseller(uow, tenant_id, command.reseller)  # committed with the wallet's settings
        tax = parties.tax_treatment(uow, tenant_id)
        wallet = change_settings(uow, tenant_id, status=command.status, overdraft_limit=command.overdraftLimit,
                                 clear_flag=bool(command.clearFlag))
    with unit_of_work() as uow:
        plan = plans.load_plan(uow.connection, tenant_id)
        calls = admission.read_concurrency(uow.connection, tenant_id)
    return ok(WalletSettingsResponse, wallet=WalletWithPlan(
        **_wallet_fields(wallet), calls=concurrency_out(calls), callPlan=call_plan_out(plan),
        inDebt=wallet.in_debt), tax=TaxOut(mode=tax.mode, rate=tax.rate, label=tax.label, wording=tax.wording))


def _name(value: str) -> str:
    try:
        return TypeAdapter(AllocationName).validate_python(value)
    except ValidationError:
        raise ValidationFailed("name", "must be 1-64 letters, digits or ._:-") from None


@billing.put("/allocations/<name>")
@documented({200: AllocationResponse}, 404, 403, json=AllocationRequest)
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
    return ok(AllocationResponse, allocation=allocation_out(view))


@billing.get("/allocations")
@documented({200: AllocationsResponse}, 404, 403, query=TenantQuery)
@rate_limited(ADMIN)
def get_allocations() -> Response:
    principal = authenticate(ADMIN)
    tenant_id = tenant_for(principal, parse_query(TenantQuery).tenantId)
    with unit_of_work() as uow:
        found = allocations.list_allocations(uow, tenant_id)
    return ok(AllocationsResponse, allocations=[allocation_out(v) for v in found])


@billing.get("/allocations/<name>")
@documented({200: AllocationResponse}, 403, 404, query=TenantQuery)
@rate_limited(ADMIN)
def get_allocation(name: str) -> Response:
    principal = authenticate(ADMIN)
    tenant_id = tenant_for(principal, parse_query(TenantQuery).tenantId)
    with unit_of_work() as uow:
        found = allocations.list_allocations(uow, tenant_id, _name(name))
    if not found:
        raise NotFound(f"no allocation {name}")
    return ok(AllocationResponse, allocation=allocation_out(found[0]))


@billing.delete("/allocations/<name>")
@documented({200: AllocationsResponse}, 403, 404, query=TenantQuery)
@rate_limited(ADMIN)
def delete_allocation(name: str) -> Response:
    """Stop an allocation from next month on; what it granted stays until it expires."""
    principal = authenticate(ADMIN)
    tenant_id = tenant_for(principal, parse_query(TenantQuery).tenantId)
    with unit_of_work() as uow:
        if not allocations.delete_allocation(uow, tenant_id, _name(name)):
            raise NotFound(f"no allocation {name}")
        remaining = allocations.list_allocations(uow, tenant_id)
    return ok(AllocationsResponse, allocations=[allocation_out(v) for v in remaining])
