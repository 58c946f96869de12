"""Who documents are from and to: the platform's issuer (billing.admin, the operator) and a tenant's
billing details (billing.manage). Receipts and monthly statements are served under /invoices
(web/api/invoicing.py); exports under /exports (web/api/exports.py)."""
from __future__ import annotations

from typing import Literal

from flask import Response

from billing_core.documents import parties
from billing_core.documents.commands import BillingDetailsRequest, IssuerRequest
from web.api.answers import Answer, TenantQuery, ok
from web.api.routing import billing, documented
from web.auth import ADMIN, MANAGE, authenticate, managed_tenant
from web.limits import rate_limited
from web.parsing import json_body, parse, parse_query
from web.runtime import unit_of_work


class IssuerOut(Answer):
    legalName: str
    address: str
    taxId: str | None
    email: str | None
    numberPrefix: str


class IssuerResponse(Answer):
    success: Literal[True]
    issuer: IssuerOut


class PartyOut(Answer):
    """A party as a document prints it."""
    legalName: str
    address: str
    taxId: str | None


class BillingDetailsResponse(Answer):
    success: Literal[True]
    billingDetails: PartyOut | None


class BillingDetailsQuery(TenantQuery):
    """A tenant's billing details: the token's own, or (billing.admin, an agency) the one named."""


def issuer_out(issuer: parties.Issuer) -> IssuerOut:
    return IssuerOut(legalName=issuer.legal_name, address=issuer.address, taxId=issuer.tax_id, email=issuer.email,
                     numberPrefix=issuer.number_prefix)


@billing.put("/settings/issuer")
@documented({200: IssuerResponse}, 403, json=IssuerRequest)
@rate_limited(ADMIN)
def put_issuer() -> Response:
    """The platform's issuer block (printed on every document) and its number prefix. Documents
    already issued keep the block and number they were issued with; the series continues."""
    authenticate(ADMIN)
    command = parse(IssuerRequest, json_body())
    with unit_of_work() as uow:
        issuer = parties.set_issuer(uow, command)
    return ok(IssuerResponse, issuer=issuer_out(issuer))


@billing.get("/settings/issuer")
@documented({200: IssuerResponse}, 403)
@rate_limited(ADMIN)
def get_issuer() -> Response:
    authenticate(ADMIN)
    with unit_of_work() as uow:
        issuer = parties.get_issuer(uow)
    return ok(IssuerResponse, issuer=issuer_out(issuer))


@billing.put("/settings/billing-details")
@documented({200: BillingDetailsResponse}, 404, 403, json=BillingDetailsRequest)
@rate_limited(MANAGE)
def put_billing_details() -> Response:
    """The customer block of the tenant's documents (legal name, address, tax id), from the next
    document issued on."""
    command = parse(BillingDetailsRequest, json_body())
    _, tenant_id = managed_tenant(command.tenantId)
    with unit_of_work() as uow:
        block = parties.set_billing_details(uow, tenant_id, command)
    return ok(BillingDetailsResponse, billingDetails=PartyOut(**block))


@billing.get("/settings/billing-details")
@documented({200: BillingDetailsResponse}, 404, 403, query=BillingDetailsQuery)
@rate_limited(MANAGE)
def get_billing_details() -> Response:
    _, tenant_id = managed_tenant(parse_query(BillingDetailsQuery).tenantId)
    with unit_of_work() as uow:
        block = parties.customer_block(uow, tenant_id)
    return ok(BillingDetailsResponse, billingDetails=PartyOut(**block) if block else None)
