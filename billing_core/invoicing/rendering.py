"""An invoice as CSV (one table: its lines, then its totals, each row naming the invoice) and as PDF
(rendered with fpdf2). Rounded amounts are shown to the currency's minor unit; exact amounts and
balances as the ledger holds them."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from decimal import Decimal

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from billing_core import money
from billing_core.invoicing.invoices import Invoice, InvoiceLine

CSV_COLUMNS = ["invoiceId", "tenantId", "period", "status", "currency", "lineNumber", "lineType", "featureKey",
               "category", "provider", "model", "unit", "priorPeriod", "description", "creditKind", "count",
               "quantity", "unitPrice", "exactAmount", "amount", "roundingDifference"]


# text a spreadsheet would run as a formula begins with one of these; numbers are written as numbers
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_COLUMNS = frozenset({"invoiceId", "tenantId", "period", "status", "currency", "lineType", "featureKey",
                          "category", "provider", "model", "unit", "description", "creditKind"})


def _cell(column: str, value: str) -> str:
    """A text cell that would start a formula in a spreadsheet (CSV injection) is prefixed with '."""
    return "'" + value if column in TEXT_COLUMNS and value.startswith(FORMULA_STARTS) else value


def exact(value: Decimal | None) -> str:
    return "" if value is None else money.format_decimal(value)


def rounded(value: Decimal, places: int) -> str:
    """An amount already rounded to the minor unit, written with all its places: 12.30."""
    return f"{value:.{places}f}" if places > 0 else f"{value:.0f}"


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def totals(invoice: Invoice) -> list[tuple[str, str, str]]:
    """(row type, label, amount) of an invoice's totals, in the order they add up."""
    places = invoice.minor_unit
    return [
        ("opening_balance", "Opening balance", exact(invoice.opening_balance)),
        ("topups", "Top-ups", exact(invoice.topups)),
        ("refunds", "Refunds", exact(invoice.refunds)),
        ("adjustments", "Adjustments", exact(invoice.adjustments)),
        ("expiries", "Expired credits", exact(invoice.expiries)),
        ("total_credits", "Total credits", exact(invoice.total_credits)),
        ("total_usage", "Total usage", rounded(invoice.total_usage, places)),
        ("rounding_difference", "Rounding difference", exact(invoice.rounding_difference)),
        ("usage_exact", "Usage as debited", exact(invoice.usage_exact)),
        ("closing_balance", "Closing balance", exact(invoice.closing_balance)),
    ]


def _csv_line(invoice: Invoice, line: InvoiceLine) -> dict[str, str]:
    usage = line.line_type == "usage"
    return {
        "lineNumber": str(line.line_no), "lineType": line.line_type, "featureKey": line.feature_key or "",
        "category": line.category or "", "provider": line.provider or "", "model": line.model or "",
        "unit": line.unit or "", "priorPeriod": "true" if line.prior_period else "false",
        "description": line.description or "", "creditKind": line.credit_kind or "", "count": str(line.item_count),
        "quantity": exact(line.quantity), "unitPrice": exact(line.unit_price), "exactAmount": exact(line.exact_amount),
        "amount": rounded(line.amount, invoice.minor_unit) if usage else exact(line.amount),
        "roundingDifference": exact(line.rounding_difference),
    }


def invoice_csv(invoice: Invoice) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    common = {"invoiceId": str(invoice.id) if invoice.id else "", "tenantId": invoice.tenant_id,
              "period": invoice.period_label, "status": invoice.status, "currency": invoice.currency}
    rows = [{**common, **_csv_line(invoice, line)} for line in invoice.lines]
    rows += [{**common, "lineType": row_type, "description": label, "amount": amount}
             for row_type, label, amount in totals(invoice)]
    for row in rows:
        writer.writerow({column: _cell(column, value) for column, value in row.items()})
    return out.getvalue()


def _latin1(value: str) -> str:
    """The PDF core fonts are Latin-1; anything else (never in our keys) becomes '?'."""
    return value.encode("latin-1", "replace").decode("latin-1")


class _InvoicePdf(FPDF):
    def __init__(self, invoice: Invoice):
        super().__init__(orientation="L", unit="mm", format="A4")
        self.invoice = invoice
        self.set_auto_page_break(auto=True, margin=15)
        self.set_title(f"Invoice {invoice.tenant_id} {invoice.period_label}")
        self.set_author("LAD Billing")
        self.set_creator("LAD Billing")

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=8)
        self.cell(0, 6, _latin1(f"{self.invoice.tenant_id} {self.invoice.period_label} - page {self.page_no()}"),
                  align="C")


def invoice_pdf(invoice: Invoice) -> bytes:
    pdf = _InvoicePdf(invoice)
    pdf.add_page()
    places = invoice.minor_unit
    status = "DRAFT" if invoice.status == "draft" else "Finalized"

    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, _latin1(f"Invoice {invoice.period_label}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", size=10)
    for label, value in (("Tenant", invoice.tenant_id), ("Invoice", str(invoice.id) if invoice.id else "(draft)"),
                         ("Status", status), ("Currency", invoice.currency),
                         ("Period", f"{_when(invoice.period_start)} to {_when(invoice.period_end)} (exclusive)"),
                         ("Finalized", _when(invoice.finalized_at) or "-")):
        pdf.cell(30, 6, _latin1(label + ":"))
        pdf.cell(0, 6, _latin1(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)

    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 8, "Usage", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", size=8)
    usage = invoice.usage_lines
    if usage:
        headings = ("#", "Feature", "Category", "Provider", "Model", "Unit", "Quantity", "Unit price",
                    "Exact amount", "Amount", "Rounding")
        with pdf.table(col_widths=(8, 34, 18, 22, 28, 22, 28, 24, 30, 22, 22), line_height=5,
                       text_align=("RIGHT", "LEFT", "LEFT", "LEFT", "LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT",
                                   "RIGHT", "RIGHT")) as table:
            table.row(headings)
            for line in usage:
                feature = (line.feature_key or "") + (" (prior period)" if line.prior_period else "")
                table.row([_latin1(v) for v in (
                    str(line.line_no), feature, line.category or "", line.provider or "", line.model or "",
                    line.unit or "", exact(line.quantity), exact(line.unit_price), exact(line.exact_amount),
                    rounded(line.amount, places), exact(line.rounding_difference))])
    else:
        pdf.cell(0, 6, "No usage in this period.", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)

    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 8, "Credits", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", size=8)
    credits = invoice.credit_lines
    if credits:
        with pdf.table(col_widths=(8, 90, 30, 40), line_height=5, width=168, align="LEFT",
                       text_align=("RIGHT", "LEFT", "RIGHT", "RIGHT")) as table:
            table.row(("#", "Description", "Entries", "Amount"))
            for line in credits:
                table.row([_latin1(v) for v in (str(line.line_no), line.description or line.line_type,
                                                  str(line.item_count), exact(line.amount))])
    else:
        pdf.cell(0, 6, "No top-ups, refunds, adjustments or expiries in this period.",
                 new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)

    if pdf.get_y() > pdf.h - 95:  # the totals and their note stay together on one page
        pdf.add_page()
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 8, "Totals", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    for row_type, label, amount in totals(invoice):
        bold = row_type in ("total_usage", "total_credits", "closing_balance")
        pdf.set_font("Helvetica", "B" if bold else "", 10)
        pdf.cell(60, 6, _latin1(label))
        pdf.cell(50, 6, _latin1(f"{amount} {invoice.currency}"), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    pdf.set_font("Helvetica", size=8)
    pdf.multi_cell(0, 4, _latin1(
        "Opening balance + total credits - usage as debited = closing balance, exactly, against the ledger. "
        f"Each usage line is rounded once, half to even, to {places} decimal places; the rounding difference "
        "is the sum of the lines' differences (total usage - usage as debited)."))
    return bytes(pdf.output())
