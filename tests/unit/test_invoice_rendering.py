"""Invoice CSV: cells that would be formulas are prefixed, numbers stay numbers."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal


def test_invoice_csv_cells_that_would_be_formulas_are_prefixed_and_numbers_stay_numbers():
    from billing_core.invoicing.invoices import Invoice, InvoiceLine
    from billing_core.invoicing.rendering import invoice_csv

    zero = Decimal(0)
    line = InvoiceLine(line_no=1, line_type="adjustment", feature_key="-f", category=None, provider=None,
                       model=None, unit=None, unit_price=None, prior_period=False, credit_kind="paid",
                       description='=HYPERLINK("http://evil.test","x")', item_count=1, quantity=None,
                       exact_amount=Decimal("-1.5"), amount=Decimal("-1.5"), rounding_difference=zero)
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    invoice = Invoice(id=None, tenant_id="@acme", wallet_id=None, period=date(2026, 1, 1), period_start=moment,
                      period_end=moment, status="draft", currency="USD", minor_unit=2, first_seq=None,
                      last_seq=None, entry_count=1, opening_balance=zero, closing_balance=Decimal("-1.5"),
                      usage_exact=zero, total_usage=zero, rounding_difference=zero, topups=zero, refunds=zero,
                      adjustments=Decimal("-1.5"), expiries=zero, total_credits=Decimal("-1.5"),
                      usage_line_count=0, credit_line_count=1, created_at=None, finalized_at=None, lines=(line,))
    rows = invoice_csv(invoice).splitlines()
    assert "'=HYPERLINK" in rows[1] and ",'-f," in rows[1] and rows[1].count("'@acme") == 1
    assert ",-1.5," in rows[1] or rows[1].endswith(",-1.5")  # an amount is still a number
