from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, WithJsonSchema, model_validator

from billing_core import money
from billing_core.fields import Strict, TenantId, storable

LegalName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(storable)]
Address = Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(storable)]
TaxId = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(storable)]
Label = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(storable)]
Email = Annotated[str, Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$"), AfterValidator(storable)]
# the digits of the number follow the prefix: a prefix ending in a digit would make them ambiguous
NumberPrefix = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._/ -]*[A-Za-z._/ -]$",
                                    examples=["LAD-2026-"])]


def _rate(value: Decimal) -> Decimal:
    value = money.bounded(value, maximum=Decimal(1), allow_zero=True)
    if value >= 1:
        raise ValueError("must be a fraction below 1, e.g. 0.19")
    return value


TaxRate = Annotated[
    Decimal, BeforeValidator(money.to_decimal), AfterValidator(_rate),
    PlainSerializer(money.format_decimal, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^0?\.\d+$|^0$", "examples": ["0.19"]}),
]


class IssuerRequest(Strict):
    """The platform's issuer block, printed on every document it issues, and its number prefix."""
    legalName: LegalName
    address: Address
    taxId: TaxId | None = None
    email: Email | None = None
    numberPrefix: NumberPrefix = "LAD-"


class BillingDetailsRequest(Strict):
    """The customer block of a tenant's documents."""
    legalName: LegalName
    address: Address
    taxId: TaxId | None = None
    tenantId: TenantId | None = None


class TaxTreatmentRequest(Strict):
    """How a tenant's credit purchases are taxed: at a rate (with its label, e.g. "VAT 19%"), as a
    reverse charge (no tax; `label` replaces the standard wording), or exempt."""
    mode: Literal["rate", "reverse_charge", "exempt"]
    rate: TaxRate | None = None
    label: Label | None = None

    @model_validator(mode="after")
    def _rate_with_mode(self) -> TaxTreatmentRequest:
        if (self.mode == "rate") != (self.rate is not None):
            raise ValueError("rate is required with mode 'rate' and only with it")
        return self
