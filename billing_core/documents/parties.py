"""Who issues a document and to whom: the issuer block (the platform's, set by the operator), the
customer block (a tenant's billing details, set by its billing.manage administrator) and the tenant's
tax treatment (set by the operator). Documents copy these blocks when issued, so a later change never
rewrites an issued document."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from billing_core.db import UnitOfWork
from billing_core.documents.commands import BillingDetailsRequest, IssuerRequest, TaxTreatmentRequest
from billing_core.documents.tables import billing_details, document_series, issuers, tax_treatments

PLATFORM_ISSUER = "platform"
# the standard wording of an intra-EU reverse charge (Council Directive 2006/112/EC, Article 196)
REVERSE_CHARGE_WORDING = "Reverse charge: VAT to be accounted for by the recipient (Article 196, Directive 2006/112/EC)"


@dataclass(frozen=True)
class Issuer:
    id: str
    legal_name: str
    address: str
    tax_id: str | None
    email: str | None
    number_prefix: str

    def block(self) -> dict[str, Any]:
        """The issuer as a document prints it (stored with the document)."""
        return {"legalName": self.legal_name, "address": self.address, "taxId": self.tax_id, "email": self.email}


@dataclass(frozen=True)
class TaxTreatment:
    mode: str  # rate | reverse_charge | exempt
    rate: Decimal | None
    label: str | None

    @property
    def wording(self) -> str | None:
        """What a document says about the tax it does not charge."""
        if self.mode == "reverse_charge":
            return self.label or REVERSE_CHARGE_WORDING
        if self.mode == "exempt":
            return self.label or "Exempt from tax"
        return None

    @property
    def tax_label(self) -> str | None:
        if self.mode == "rate":
            return self.label or f"Tax {self.rate}"
        return None


EXEMPT = TaxTreatment("exempt", None, None)


def get_issuer(uow: UnitOfWork, issuer_id: str = PLATFORM_ISSUER) -> Issuer:
    row = uow.connection.execute(select(issuers).where(issuers.c.id == issuer_id)).one()
    return Issuer(row.id, row.legal_name, row.address, row.tax_id, row.email, row.number_prefix)


def agency_issuer_id(agency_id: str) -> str:
    return f"agency:{agency_id}"


def issuer_for(uow: UnitOfWork, tenant_id: str) -> Issuer:
    """Who issues the tenant's documents: its agency for a sub-account (white label: the agency's
    name, address and tax id from its billing details, its own number series, nothing of LAD's), the
    platform for everyone else. The agency's block is refreshed from its billing details as it issues."""
    agency = _agency_of(uow, tenant_id)
    return get_issuer(uow) if agency is None else agency_issuer(uow, agency)


def agency_issuer(uow: UnitOfWork, agency: str) -> Issuer:
    """The agency as issuer of its sub-accounts' documents, its block refreshed from its billing
    details (its own name when it has set none), its series created at 1 on first use."""
    issuer_id = agency_issuer_id(agency)
    details = customer_block(uow, agency) or {"legalName": agency, "address": "", "taxId": None}
    values = {"legal_name": details["legalName"], "address": details["address"], "tax_id": details["taxId"],
              "updated_at": uow.now()}
    uow.connection.execute(insert(issuers).values(id=issuer_id, email=None, number_prefix=f"{agency}-", **values)
                           .on_conflict_do_update(index_elements=[issuers.c.id], set_=values))
    uow.connection.execute(insert(document_series).values(issuer_id=issuer_id, next_number=1)
                           .on_conflict_do_nothing())
    return get_issuer(uow, issuer_id)


def _agency_of(uow: UnitOfWork, tenant_id: str) -> str | None:
    from billing_core.agencies.tree import agency_of

    return agency_of(uow, tenant_id)


# updated_at is the transaction's time passed as a parameter (uow.now()): no now() in DO UPDATE SET (Citus)
def set_issuer(uow: UnitOfWork, command: IssuerRequest, issuer_id: str = PLATFORM_ISSUER) -> Issuer:
    """Replace the issuer's block and number prefix, and commit. The series continues: the digits of
    the next document follow the last one whatever the prefix."""
    values = {"legal_name": command.legalName, "address": command.address, "tax_id": command.taxId,
              "email": command.email, "number_prefix": command.numberPrefix, "updated_at": uow.now()}
    uow.connection.execute(insert(issuers).values(id=issuer_id, **values)
                           .on_conflict_do_update(index_elements=[issuers.c.id], set_=values))
    issuer = get_issuer(uow, issuer_id)
    uow.commit()
    return issuer


def customer_block(uow: UnitOfWork, tenant_id: str) -> dict[str, Any] | None:
    """The tenant's billing details as a document prints them; None when it has set none."""
    row = uow.connection.execute(select(billing_details).where(billing_details.c.tenant_id == tenant_id)).first()
    if row is None:
        return None
    return {"legalName": row.legal_name, "address": row.address, "taxId": row.tax_id}


def set_billing_details(uow: UnitOfWork, tenant_id: str, command: BillingDetailsRequest) -> dict[str, Any]:
    values = {"legal_name": command.legalName, "address": command.address, "tax_id": command.taxId,
              "updated_at": uow.now()}
    uow.connection.execute(insert(billing_details).values(tenant_id=tenant_id, **values)
                           .on_conflict_do_update(index_elements=[billing_details.c.tenant_id], set_=values))
    block = customer_block(uow, tenant_id)
    assert block is not None
    uow.commit()
    return block


def tax_treatment(uow: UnitOfWork, tenant_id: str) -> TaxTreatment:
    """The tenant's tax treatment; a tenant with none is exempt."""
    row = uow.connection.execute(select(tax_treatments).where(tax_treatments.c.tenant_id == tenant_id)).first()
    return EXEMPT if row is None else TaxTreatment(row.mode, row.rate, row.label)


def set_tax_treatment(uow: UnitOfWork, tenant_id: str, command: TaxTreatmentRequest) -> TaxTreatment:
    """Set the tenant's tax treatment (no commit: the caller's wallet settings commit with it). Applies
    to documents issued from now on."""
    values = {"mode": command.mode, "rate": command.rate, "label": command.label, "updated_at": uow.now()}
    uow.connection.execute(insert(tax_treatments).values(tenant_id=tenant_id, **values)
                           .on_conflict_do_update(index_elements=[tax_treatments.c.tenant_id], set_=values))
    return TaxTreatment(command.mode, command.rate, command.label)
