"""Agencies and their sub-accounts under /api/billing/sub-accounts: the tree, funding, top-ups of
prepaid sub-accounts and the resale price book. Every route acts for the calling agency; a tenant
that is not an agency, and any sub-account that is not the agency's own, is not found."""
from __future__ import annotations

from typing import Literal

from flask import Response
from pydantic import Field

from billing_core.agencies import attach, pricebook, topups, tree
from billing_core.agencies.commands import (
    ResaleMultiplierRequest,
    ResalePriceRowRequest,
    SubAccountAttachment,
    SubAccountChange,
    SubAccountRequest,
    SubAccountTopUp,
)
from billing_core.agencies.resale import ResaleMultiplier
from billing_core.catalog.models import Terms, terms_from_request
from billing_core.errors import NotFound, ValidationFailed
from web.api.answers import Answer, DecimalString, Timestamp, ok
from web.api.catalog import PriceResponse, price_out
from web.api.ledger import CreditResponse, credit_answer
from web.api.routing import billing, documented
from web.auth import ADMIN, MANAGE, TENANT_ID, VIEW, Principal, authenticate
from web.limits import rate_limited
from web.parsing import json_body, parse, with_idempotency_header
from web.runtime import unit_of_work


class SubAccountOut(Answer):
    tenantId: str
    funding: Literal["prepaid", "agency"]
    spendCap: DecimalString | None
    createdAt: Timestamp


class SubAccountResponse(Answer):
    success: Literal[True]
    subAccount: SubAccountOut


class SubAccountsResponse(Answer):
    success: Literal[True]
    subAccounts: list[SubAccountOut]


class ResaleMultiplierOut(Answer):
    multiplier: DecimalString
    category: str | None
    provider: str | None
    model: str | None
    unit: str | None
    subAccountId: str | None


class ResalePriceResponse(Answer):
    success: Literal[True]
    price: ResaleMultiplierOut


class ResalePricesResponse(Answer):
    success: Literal[True]
    prices: list[ResaleMultiplierOut]


def sub_account_out(s: tree.SubAccount) -> SubAccountOut:
    return SubAccountOut(tenantId=s.tenant_id, funding=s.funding, spendCap=s.spend_cap, createdAt=s.created_at)


def multiplier_out(m: ResaleMultiplier) -> ResaleMultiplierOut:
    category, provider, model, unit = m.scope
    return ResaleMultiplierOut(multiplier=m.multiplier, category=category, provider=provider, model=model,
                               unit=unit, subAccountId=m.sub_account_id)


def _agency(capability: str) -> Principal:
    """The calling agency; any other tenant's token finds no sub-accounts here (404)."""
    principal = authenticate(capability)
    with unit_of_work() as uow:
        if not tree.is_agency(uow, principal.tenant_id):
            raise NotFound("this tenant is not an agency")
    return principal


@billing.post("/sub-accounts")
@documented({201: SubAccountResponse}, 403, 404, 409, json=SubAccountRequest)
@rate_limited(MANAGE)
def post_sub_account() -> Response:
    """Create the sub-account `<agencyId>:<name>` (funding `prepaid`: its own wallet, credited by the
    agency; `agency`: charges debit only the agency, up to an optional monthly `spendCap` at resale
    prices). A tenant id with any billing record is refused (409 sub_account_exists)."""
    principal = _agency(MANAGE)
    command = parse(SubAccountRequest, json_body())
    with unit_of_work() as uow:
        created = tree.create_sub_account(uow, principal.tenant_id, command.name, command.funding, command.spendCap)
    return ok(SubAccountResponse, status=201, subAccount=sub_account_out(created))


@billing.post("/agencies/<agency_id>/sub-accounts")
@documented({201: SubAccountResponse}, 403, 404, 409, json=SubAccountAttachment)
@rate_limited(ADMIN)
def post_attached_sub_account(agency_id: str) -> Response:
    """The operator (`billing.admin`) attaches any existing tenant — one with history, which the
    agency itself cannot claim, whatever its id — as the agency's sub-account. Refused: the tenant
    is the agency (400), the agency is not one (404), the tenant is an agency
    (409 tenant_is_agency) or already a sub-account (409 sub_account_exists), or it has a balance or
    holds and would be `agency`-funded (409 sub_account_has_balance: attach it as `prepaid`, its
    balance stays its own). Agency tokens cannot attach (403)."""
    authenticate(ADMIN)
    if not TENANT_ID.fullmatch(agency_id):
        raise NotFound(f"agency {agency_id} not found", {"field": "agencyId"})
    command = parse(SubAccountAttachment, json_body())
    with unit_of_work() as uow:
        attached = attach.attach(uow, agency_id, command.tenantId, command.funding, command.spendCap)
    return ok(SubAccountResponse, status=201, subAccount=sub_account_out(attached))


@billing.get("/sub-accounts")
@documented({200: SubAccountsResponse}, 403, 404)
@rate_limited(VIEW)
def get_sub_accounts() -> Response:
    """The agency's sub-accounts."""
    principal = _agency(VIEW)
    with unit_of_work() as uow:
        found = tree.list_sub_accounts(uow, principal.tenant_id)
    return ok(SubAccountsResponse, subAccounts=[sub_account_out(s) for s in found])


@billing.put("/sub-accounts/prices")
@documented({200: ResalePriceResponse}, 403, 404, json=ResaleMultiplierRequest)
@rate_limited(MANAGE)
def put_resale_price() -> Response:
    """Set one row of the resale price book: the agency's own price times `multiplier` for the catalog
    items the named fields select, for every sub-account or `subAccountId`; the most specific row
    wins (then one sub-account's over every sub-account's). Without a row, a sub-account pays the
    agency's price."""
    principal = _agency(MANAGE)
    command = parse(ResaleMultiplierRequest, json_body())
    with unit_of_work() as uow:
        row = pricebook.put_multiplier(uow, principal.tenant_id, command)
    return ok(ResalePriceResponse, price=multiplier_out(row))


@billing.put("/sub-accounts/prices/rows")
@documented({200: PriceResponse}, 403, 404, json=ResalePriceRowRequest)
@rate_limited(MANAGE)
def put_resale_price_row() -> Response:
    """An explicit resale price row (the PUT /pricing shape: any pricing model, effectiveFrom) for every
    sub-account, or for `subAccountId`; a sub-account's own row wins over the agency-wide one, and both
    over the multipliers. The row in force until then is closed, never edited."""
    principal = _agency(MANAGE)
    command = parse(ResalePriceRowRequest, json_body())
    if command.tenantId is not None:
        raise ValidationFailed("tenantId", "name the sub-account with subAccountId")
    terms = _terms(command)
    with unit_of_work() as uow:
        price = pricebook.put_row(uow, principal.tenant_id, command.subAccountId,
                                  (command.category, command.provider, command.model, command.unit), terms,
                                  command.effectiveFrom, command.description)
    return ok(PriceResponse, price=price_out(price))


class BookPreviewOut(Answer):
    from_: Timestamp = Field(alias="from")
    to: Timestamp
    current: DecimalString = Field(description="what the sub-accounts were charged (resale)")
    proposed: DecimalString = Field(description="what the same items would have cost with the proposed row")
    agencyCost: DecimalString = Field(description="what LAD charged the agency for them")
    items: int


class BookPreviewResponse(Answer):
    success: Literal[True]
    preview: BookPreviewOut


@billing.post("/sub-accounts/prices/preview")
@documented({200: BookPreviewResponse}, 403, 404, json=ResaleMultiplierRequest)
@rate_limited(VIEW)
def post_resale_preview() -> Response:
    """What the last 30 days of the sub-accounts' usage would have cost with this multiplier row in the
    book (the PUT /sub-accounts/prices body), each event repriced exactly as charging prices it
    (explicit resale rows first, graduated tiers from the sub-account's own month); nothing changes."""
    principal = _agency(VIEW)
    command = parse(ResaleMultiplierRequest, json_body())
    with unit_of_work() as uow:
        if command.subAccountId is not None:
            tree.sub_account_of(uow, principal.tenant_id, command.subAccountId)
        found = pricebook.preview(uow, principal.tenant_id, command)
    return _preview_answer(found)


@billing.post("/sub-accounts/prices/rows/preview")
@documented({200: BookPreviewResponse}, 403, 404, json=ResalePriceRowRequest)
@rate_limited(VIEW)
def post_resale_row_preview() -> Response:
    """What the last 30 days of the sub-accounts' usage would have cost with this explicit resale row
    (the PUT /sub-accounts/prices/rows body) in force all along; nothing changes."""
    principal = _agency(VIEW)
    command = parse(ResalePriceRowRequest, json_body())
    if command.tenantId is not None:
        raise ValidationFailed("tenantId", "name the sub-account with subAccountId")
    proposal = pricebook.ProposedRow(command.subAccountId, (command.category, command.provider, command.model,
                                                            command.unit), _terms(command))
    with unit_of_work() as uow:
        if command.subAccountId is not None:
            tree.sub_account_of(uow, principal.tenant_id, command.subAccountId)
        found = pricebook.preview(uow, principal.tenant_id, proposal)
    return _preview_answer(found)


def _preview_answer(found: pricebook.BookPreview) -> Response:
    return ok(BookPreviewResponse, preview=BookPreviewOut(
        from_=found.start, to=found.end, current=found.current, proposed=found.proposed,
        agencyCost=found.agency_cost, items=found.items))


def _terms(command: ResalePriceRowRequest) -> Terms:
    return terms_from_request(
        command.pricingModel, unit_price=command.unitPrice, package_size=command.packageSize,
        package_price=command.packagePrice, minimum_quantity=command.minimumQuantity,
        tiers=None if command.tiers is None else [t.model_dump() for t in command.tiers])


@billing.get("/sub-accounts/prices")
@documented({200: ResalePricesResponse}, 403, 404)
@rate_limited(VIEW)
def get_resale_prices() -> Response:
    """The agency's resale price book."""
    principal = _agency(VIEW)
    with unit_of_work() as uow:
        rows = pricebook.list_multipliers(uow, principal.tenant_id)
    return ok(ResalePricesResponse, prices=[multiplier_out(m) for m in rows])


@billing.get("/sub-accounts/<tenant_id>")
@documented({200: SubAccountResponse}, 403, 404)
@rate_limited(VIEW)
def get_sub_account(tenant_id: str) -> Response:
    """One of the agency's sub-accounts; another agency's, or any other tenant, is not found."""
    principal = _agency(VIEW)
    with unit_of_work() as uow:
        found = tree.sub_account_of(uow, principal.tenant_id, tenant_id)
    return ok(SubAccountResponse, subAccount=sub_account_out(found))


@billing.patch("/sub-accounts/<tenant_id>")
@documented({200: SubAccountResponse}, 403, 404, json=SubAccountChange)
@rate_limited(MANAGE)
def patch_sub_account(tenant_id: str) -> Response:
    """Change a sub-account's funding or monthly spend cap (`spendCap: null` clears it)."""
    principal = _agency(MANAGE)
    command = parse(SubAccountChange, json_body())
    with unit_of_work() as uow:
        changed = tree.update_sub_account(uow, principal.tenant_id, tenant_id, funding=command.funding,
                                          spend_cap=command.spendCap,
                                          clear_cap="spendCap" in command.model_fields_set)
    return ok(SubAccountResponse, subAccount=sub_account_out(changed))


@billing.post("/sub-accounts/<tenant_id>/topups")
@documented({200: CreditResponse}, 403, 404, 409, json=SubAccountTopUp)
@rate_limited(MANAGE)
def post_sub_account_topup(tenant_id: str) -> Response:
    """Credit a prepaid sub-account's wallet (a paid grant; the money came from the agency's client,
    outside LAD: no receipt from LAD, and the agency's wallet does not move)."""
    principal = _agency(MANAGE)
    command = parse(SubAccountTopUp, with_idempotency_header(json_body()))
    with unit_of_work() as uow:
        result = topups.top_up_sub_account(uow, principal.tenant_id, tenant_id, amount=command.amount,
                                           idempotency_key=command.idempotencyKey, description=command.description,
                                           created_by=principal.subject)
    return credit_answer(result)
