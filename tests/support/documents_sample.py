"""A monthly statement and a receipt built in memory (no database), for the PDF tests and the sample
pages under docs/ (python -m tests.support.documents_sample docs/)."""
from __future__ import annotations

import sys
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

from billing_core.documents.receipts import Receipt
from billing_core.invoicing.invoices import Invoice, InvoiceLine

ISSUER = {"legalName": "LAD Voice Platform GmbH", "address": "Torstrasse 1\n10119 Berlin\nGermany",
          "taxId": "DE123456789", "email": "billing@lad.example"}
CUSTOMER = {"legalName": "Acme Contact Centers SARL", "address": "12 rue de la Paix\n75002 Paris\nFrance",
            "taxId": "FR12345678901"}
FEATURES = ["voice-agent", "campaigns", "transcripts", "ivr"]
ITEMS = [("stt", "openai", "whisper-1", "second", "0.0001"), ("llm_prompt", "openai", "gpt-4", "token", "0.00003"),
         ("llm_completion", "openai", "gpt-4", "token", "0.00006"), ("tts", "openai", "tts-1", "character", "0.000015"),
         ("telephony", "twilio", "voice", "minute", "0.013")]


def statement(lines: int = 12, number: str | None = "LAD-2026-000123") -> Invoice:
    usage = []
    for n in range(lines):
        category, provider, model, unit, price = ITEMS[n % len(ITEMS)]
        quantity = Decimal(1000 + 37 * n)
        exact = quantity * Decimal(price)
        amount = exact.quantize(Decimal("0.01"))
        usage.append(InvoiceLine(
            line_no=n + 1, line_type="usage", feature_key=FEATURES[(n // len(ITEMS)) % len(FEATURES)],
            category=category, provider=provider, model=f"{model}" if n < len(ITEMS) * len(FEATURES) else f"{model}-{n}",
            unit=unit, unit_price=Decimal(price), prior_period=False, credit_kind=None, description=None,
            item_count=3 + n, quantity=quantity, exact_amount=exact, amount=amount,
            rounding_difference=amount - exact))
    usage_exact = sum((line.exact_amount for line in usage), Decimal(0))
    total_usage = sum((line.amount for line in usage), Decimal(0))
    topup = InvoiceLine(line_no=lines + 1, line_type="topup", feature_key=None, category=None, provider=None,
                        model=None, unit=None, unit_price=None, prior_period=False, credit_kind="paid",
                        description="Top-ups (paid)", item_count=2, quantity=None, exact_amount=Decimal(500),
                        amount=Decimal(500), rounding_difference=Decimal(0))
    start, end = datetime(2026, 10, 1, tzinfo=timezone.utc), datetime(2026, 11, 1, tzinfo=timezone.utc)
    opening = Decimal("120.5")
    zero = Decimal(0)
    return Invoice(
        id=uuid.UUID(int=7), tenant_id="acme", wallet_id=uuid.UUID(int=8), period=date(2026, 10, 1),
        period_start=start, period_end=end, status="finalized", currency="USD", minor_unit=2, first_seq=1,
        last_seq=lines + 2, entry_count=lines + 2, opening_balance=opening,
        closing_balance=opening + Decimal(500) - usage_exact, usage_exact=usage_exact, total_usage=total_usage,
        rounding_difference=total_usage - usage_exact, topups=Decimal(500), refunds=zero, adjustments=zero,
        expiries=zero, total_credits=Decimal(500), usage_line_count=lines, credit_line_count=1,
        created_at=end, finalized_at=end, lines=(*usage, topup), number=number,
        issued_at=datetime(2026, 11, 1, 0, 15, tzinfo=timezone.utc) if number else None, issuer_id="platform",
        issuer=ISSUER, customer=CUSTOMER)


def receipt(mode: str = "rate") -> Receipt:
    rated = mode == "rate"
    return Receipt(
        id=uuid.UUID(int=9), tenant_id="acme", grant_id=uuid.UUID(int=10), issuer_id="platform",
        number="LAD-2026-000124", currency="USD", minor_unit=2, gross=Decimal("33.33"),
        net=Decimal("28.01") if rated else Decimal("33.33"), tax=Decimal("5.32") if rated else Decimal(0),
        tax_mode=mode, tax_rate=Decimal("0.19") if rated else None, tax_label="VAT 19%" if rated else None,
        tax_wording=None if rated else "Reverse charge: VAT to be accounted for by the recipient "
                                       "(Article 196, Directive 2006/112/EC)",
        rounding_difference=Decimal("5.32") - Decimal("28.01") * Decimal("0.19") if rated else Decimal(0),
        source="stripe", description="Credit purchase, Stripe payment pi_3QxExample", issuer=ISSUER,
        customer=CUSTOMER, issued_at=datetime(2026, 10, 14, 9, 30, tzinfo=timezone.utc))


if __name__ == "__main__":
    from billing_core.invoicing.rendering import invoice_pdf, receipt_pdf

    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    (target / "statement-sample.pdf").write_bytes(invoice_pdf(statement(40)))
    (target / "receipt-sample.pdf").write_bytes(receipt_pdf(receipt()))
