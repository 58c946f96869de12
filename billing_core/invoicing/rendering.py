"""An invoice as CSV (one table: its lines, then its totals, each row naming the invoice) and as PDF
(rendered with fpdf2). Rounded amounts are shown to the currency's minor unit; exact amounts and
balances as the ledger holds them."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from billing_core import money
from billing_core.documents.credit_notes import CreditNote
from billing_core.documents.receipts import Receipt
from billing_core.invoicing.invoices import Invoice, InvoiceLine

CSV_COLUMNS = ["invoiceId", "number", "issuedAt", "tenantId", "period", "status", "currency", "lineNumber",
               "lineType", "featureKey",
               "category", "provider", "model", "unit", "priorPeriod", "description", "creditKind", "count",
               "quantity", "unitPrice", "exactAmount", "amount", "roundingDifference"]


# text a spreadsheet would run as a formula begins with one of these; numbers are written as numbers
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_COLUMNS = frozenset({"invoiceId", "number", "issuedAt", "receiptId", "grantId", "source", "taxLabel",
                          "taxMode", "taxWording", "tenantId", "period", "status", "currency", "lineType", "featureKey",
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
    common = {"invoiceId": str(invoice.id) if invoice.id else "", "number": invoice.number or "",
              "issuedAt": _when(invoice.issued_at), "tenantId": invoice.tenant_id,
              "period": invoice.period_label, "status": invoice.status, "currency": invoice.currency}
    rows = [{**common, **_csv_line(invoice, line)} for line in invoice.lines]
    rows += [{**common, "lineType": row_type, "description": label, "amount": amount}
             for row_type, label, amount in totals(invoice)]
    rows += [{**common, "lineType": "feature_usage", "featureKey": feature, "description": "Usage by feature",
              "amount": rounded(amount, invoice.minor_unit)} for feature, amount in usage_by_feature(invoice)]
    for row in rows:
        writer.writerow({column: _cell(column, value) for column, value in row.items()})
    return out.getvalue()


def _latin1(value: str) -> str:
    """The PDF core fonts are Latin-1; anything else (never in our keys) becomes '?'."""
    return value.encode("latin-1", "replace").decode("latin-1")


# What the monthly document is, and how it relates to the receipts (see the README, "Documents")
STATEMENT_NOTE = ("This monthly statement is not a tax invoice. Credits are prepaid: tax is charged when they are "
                  "bought, on the numbered receipt of each purchase (the tax document); this statement shows how "
                  "the credits were used.")
RECEIPT_NOTE = ("Advance payment for prepaid usage credits. This receipt is the tax document for the purchase; "
                "the monthly statements show how the credits are used and charge no further tax.")


def _party_lines(block: dict | None) -> list[str]:
    if not block:
        return ["(no billing details set)"]
    found = [block.get("legalName") or "", *(block.get("address") or "").splitlines()]
    if block.get("taxId"):
        found.append(f"Tax ID: {block['taxId']}")
    if block.get("email"):
        found.append(str(block["email"]))
    return [line for line in found if line]


class _DocumentPdf(FPDF):
    """A document with a footer naming it and numbering its pages "2 / 3"."""

    def __init__(self, name: str, orientation: str = "P"):
        super().__init__(orientation=orientation, unit="mm", format="A4")
        self.name = name
        self.set_auto_page_break(auto=True, margin=16)
        self.set_title(name)
        self.set_author("LAD Billing")
        self.set_creator("LAD Billing")

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=8)
        self.cell(0, 6, _latin1(f"{self.name}    {self.page_no()} / {{nb}}"), align="C")

    def parties(self, issuer: dict | None, customer: dict | None) -> None:
        """The issuer (left) and the customer (right), side by side."""
        top, half = self.get_y(), (self.w - self.l_margin - self.r_margin) / 2
        for column, (title, block) in enumerate((("From", issuer), ("Bill to", customer))):
            self.set_xy(self.l_margin + column * half, top)
            self.set_font("Helvetica", "B", 9)
            self.cell(half, 5, title, new_x=XPos.LEFT, new_y=YPos.NEXT)
            self.set_font("Helvetica", size=9)
            for line in _party_lines(block):
                self.cell(half, 4.5, _latin1(line), new_x=XPos.LEFT, new_y=YPos.NEXT)
            if column == 0:
                bottom = self.get_y()
        self.set_xy(self.l_margin, max(bottom, self.get_y()) + 3)

    def facts(self, rows: list[tuple[str, str]]) -> None:
        self.set_font("Helvetica", size=9)
        for label, value in rows:
            self.cell(32, 5, _latin1(label + ":"))
            self.cell(0, 5, _latin1(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.ln(2)

    def heading(self, title: str) -> None:
        self.set_font("Helvetica", "B", 11)
        self.cell(0, 7, _latin1(title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def note(self, value: str) -> None:
        self.set_font("Helvetica", size=8)
        self.multi_cell(0, 4, _latin1(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _document_name(invoice: Invoice) -> str:
    return f"Statement {invoice.number}" if invoice.number else f"Statement {invoice.tenant_id} {invoice.period_label}"


def usage_by_feature(invoice: Invoice) -> list[tuple[str, Decimal]]:
    """The rounded usage of each feature (sums of its lines), for the summary."""
    by_feature: dict[str, Decimal] = {}
    for line in invoice.usage_lines:
        key = line.feature_key or "-"
        by_feature[key] = money.add(by_feature.get(key, Decimal(0)), line.amount)
    return sorted(by_feature.items())


def invoice_pdf(invoice: Invoice) -> bytes:
    """The monthly statement: page 1 holds the number, dates, parties and the whole summary (balances,
    credits, usage by feature, totals); the lines follow, grouped by feature and category."""
    pdf = _DocumentPdf(_document_name(invoice), orientation="L")
    pdf.add_page()
    places, currency = invoice.minor_unit, invoice.currency
    pdf.set_font("Helvetica", "B", 18)
    title = "Monthly statement" + (" (DRAFT)" if invoice.status == "draft" else "")
    pdf.cell(0, 10, _latin1(f"{title} {invoice.period_label}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.facts([("Number", invoice.number or "(none: drafts are not numbered)"),
               ("Issued", _when(invoice.issued_at or invoice.finalized_at) or "-"),
               ("Period", f"{_when(invoice.period_start)} to {_when(invoice.period_end)} (exclusive)"),
               ("Tenant", invoice.tenant_id), ("Currency", currency)])
    pdf.parties(invoice.issuer, invoice.customer)

    pdf.heading("Summary")
    summary: list[tuple[str, str, bool]] = [("Opening balance", exact(invoice.opening_balance), True),
                                            ("Credits purchased (top-ups)", exact(invoice.topups), False)]
    for label, value in (("Refunds", invoice.refunds), ("Corrections (adjustments)", invoice.adjustments),
                         ("Expired credits", invoice.expiries)):
        if value:
            summary.append((label, exact(value), False))
    summary.append(("Total credits", exact(invoice.total_credits), True))
    summary += [(f"Usage: {feature}", "-" + rounded(amount, places), False)
                for feature, amount in usage_by_feature(invoice)]
    summary += [("Total usage", "-" + rounded(invoice.total_usage, places), True),
                ("Rounding difference (usage)", exact(invoice.rounding_difference), False),
                ("Usage as debited", "-" + exact(invoice.usage_exact), False),
                ("Closing balance", exact(invoice.closing_balance), True)]
    for label, amount, bold in summary:
        pdf.set_font("Helvetica", "B" if bold else "", 9)
        pdf.cell(80, 5, _latin1(label))
        pdf.cell(45, 5, _latin1(f"{amount} {currency}"), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    pdf.note("Opening balance + total credits - usage as debited = closing balance, exactly, against the ledger. "
             f"Each usage line is rounded once, half to even, to {places} decimal places; the rounding difference "
             "is the sum of the lines' differences (total usage - usage as debited). " + STATEMENT_NOTE)

    pdf.ln(3)
    pdf.heading("Usage by feature and category")
    pdf.set_font("Helvetica", size=8)
    usage = sorted(invoice.usage_lines, key=lambda line: (line.feature_key or "", line.category or "", line.line_no))
    if usage:
        with pdf.table(col_widths=(10, 30, 28, 18, 30, 20, 28, 24, 30, 22, 22), line_height=4.5,
                       text_align=("RIGHT", "LEFT", "LEFT", "LEFT", "LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT",
                                   "RIGHT", "RIGHT")) as table:
            table.row(("#", "Feature", "Category", "Provider", "Model", "Unit", "Quantity", "Unit price",
                       "Exact amount", "Amount", "Rounding"))
            for line in usage:
                feature = (line.feature_key or "") + (" (prior period)" if line.prior_period else "")
                table.row([_latin1(v) for v in (
                    str(line.line_no), feature, line.category or "", line.provider or "", line.model or "",
                    line.unit or "", exact(line.quantity), exact(line.unit_price), exact(line.exact_amount),
                    rounded(line.amount, places), exact(line.rounding_difference))])
    else:
        pdf.cell(0, 6, "No usage in this period.", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(3)
    pdf.heading("Credits")
    pdf.set_font("Helvetica", size=8)
    credits = invoice.credit_lines
    if credits:
        with pdf.table(col_widths=(10, 100, 30, 40), line_height=4.5, width=180, align="LEFT",
                       text_align=("RIGHT", "LEFT", "RIGHT", "RIGHT")) as table:
            table.row(("#", "Description", "Entries", "Amount"))
            for line in credits:
                table.row([_latin1(v) for v in (str(line.line_no), line.description or line.line_type,
                                                  str(line.item_count), exact(line.amount))])
    else:
        pdf.cell(0, 6, "No top-ups, refunds, adjustments or expiries in this period.",
                 new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output())


RECEIPT_CSV_COLUMNS = ["receiptId", "number", "issuedAt", "tenantId", "currency", "grantId", "source", "description",
                       "net", "taxLabel", "taxRate", "tax", "gross", "roundingDifference", "taxMode", "taxWording"]


def receipt_csv(receipt: Receipt) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=RECEIPT_CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    row = {"receiptId": str(receipt.id), "number": receipt.number, "issuedAt": _when(receipt.issued_at),
           "tenantId": receipt.tenant_id, "currency": receipt.currency, "grantId": str(receipt.grant_id),
           "source": receipt.source, "description": receipt.description or "",
           "net": rounded(receipt.net, receipt.minor_unit), "taxLabel": receipt.tax_label or "",
           "taxRate": exact(receipt.tax_rate), "tax": rounded(receipt.tax, receipt.minor_unit),
           "gross": rounded(receipt.gross, receipt.minor_unit), "roundingDifference": exact(receipt.rounding_difference),
           "taxMode": receipt.tax_mode, "taxWording": receipt.tax_wording or ""}
    writer.writerow({column: _cell(column, value) for column, value in row.items()})
    return out.getvalue()


def receipt_pdf(receipt: Receipt) -> bytes:
    pdf = _DocumentPdf(f"Receipt {receipt.number}")
    pdf.add_page()
    places, currency = receipt.minor_unit, receipt.currency
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, "Receipt", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.facts([("Number", receipt.number), ("Issued", _when(receipt.issued_at)), ("Tenant", receipt.tenant_id),
               ("Currency", currency)])
    pdf.parties(receipt.issuer, receipt.customer)
    pdf.heading("Credit purchase")
    pdf.set_font("Helvetica", size=9)
    tax_label = receipt.tax_label or ("Tax (reverse charge)" if receipt.tax_mode == "reverse_charge" else "Tax")
    with pdf.table(col_widths=(110, 40), width=150, align="LEFT", line_height=6,
                   text_align=("LEFT", "RIGHT")) as table:
        table.row(("Description", f"Amount ({currency})"))
        table.row((_latin1(receipt.description or "Prepaid usage credits"), rounded(receipt.net, places)))
        table.row(("Net", rounded(receipt.net, places)))
        table.row((_latin1(tax_label), rounded(receipt.tax, places)))
        table.row(("Total paid (gross)", rounded(receipt.gross, places)))
    pdf.ln(2)
    if receipt.tax_wording:
        pdf.set_font("Helvetica", "B", 9)
        pdf.multi_cell(0, 5, _latin1(receipt.tax_wording), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if receipt.tax_mode == "rate":
        pdf.note(f"Net = gross / (1 + {exact(receipt.tax_rate)}) rounded half to even to {places} decimal places; "
                 f"tax = gross - net. Rounding difference (tax - net x rate): {exact(receipt.rounding_difference)}.")
    pdf.note(RECEIPT_NOTE)
    return bytes(pdf.output())


# --- credit and debit notes (issue 20) -----------------------------------------------------------------

CREDIT_NOTE_CSV_COLUMNS = ["noteId", "number", "kind", "issuedAt", "tenantId", "currency", "correctsInvoiceId",
                           "correctsInvoiceNumber", "period", "usageEventId", "featureKey", "category", "provider",
                           "model", "unit", "quantityBefore", "amountBefore", "quantityAfter", "amountAfter",
                           "amount", "description"]
CREDIT_NOTE_TEXT = frozenset({"noteId", "kind", "correctsInvoiceId", "correctsInvoiceNumber", "usageEventId"})


def credit_note_csv(note: CreditNote) -> str:
    """One row per corrected line, then a total row carrying the note's amount (signed: positive credited)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CREDIT_NOTE_CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    common = {"noteId": str(note.id), "number": note.number, "kind": note.kind, "issuedAt": _when(note.issued_at),
              "tenantId": note.tenant_id, "currency": note.currency, "correctsInvoiceId": str(note.corrects_invoice_id),
              "correctsInvoiceNumber": note.corrects_invoice_number or "", "period": note.period_label,
              "usageEventId": str(note.usage_event_id or "")}
    rows = [{**common, **{k: line.get(k, "") for k in ("featureKey", "category", "provider", "model", "unit",
                                                       "quantityBefore", "amountBefore", "quantityAfter",
                                                       "amountAfter")}, "description": "corrected line"}
            for line in note.lines]
    rows.append({**common, "amount": exact(note.amount), "description": note.reason})
    for row in rows:
        writer.writerow({c: _note_cell(c, str(row.get(c, ""))) for c in CREDIT_NOTE_CSV_COLUMNS})
    return out.getvalue()


def _note_cell(column: str, value: str) -> str:
    if column in CREDIT_NOTE_TEXT:
        return value if not value.startswith(FORMULA_STARTS) else "'" + value
    return _cell(column, value)


def credit_note_pdf(note: CreditNote) -> bytes:
    title = "Credit note" if note.kind == "credit_note" else "Debit note"
    pdf = _DocumentPdf(f"{title} {note.number}")
    pdf.add_page()
    places, currency = note.minor_unit, note.currency
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 10, title, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.facts([("Number", note.number), ("Issued", _when(note.issued_at)), ("Tenant", note.tenant_id),
               ("Corrects", f"{note.corrects_invoice_number or note.corrects_invoice_id} ({note.period_label})"),
               ("Usage event", str(note.usage_event_id or "several (re-rate)")), ("Currency", currency)])
    pdf.parties(note.issuer, note.customer)
    pdf.heading("Corrected lines")
    pdf.set_font("Helvetica", size=8)
    with pdf.table(col_widths=(58, 22, 26, 22, 26), width=154, align="LEFT", line_height=5,
                   text_align=("LEFT", "RIGHT", "RIGHT", "RIGHT", "RIGHT")) as table:
        table.row(("Item", "Qty before", f"Amount ({currency})", "Qty after", f"Amount ({currency})"))
        for line in note.lines:
            item = "/".join(str(line.get(k, "")) for k in ("category", "provider", "model", "unit"))
            table.row((_latin1(f"{line.get('featureKey', '')}: {item}"), str(line.get("quantityBefore", "")),
                       str(line.get("amountBefore", "")), str(line.get("quantityAfter", "")),
                       str(line.get("amountAfter", ""))))
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 10)
    moved = "Credited to the balance" if note.amount > 0 else "Debited from the balance"
    shown = abs(note.amount).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    pdf.cell(0, 6, _latin1(f"{moved}: {rounded(shown, places)} {currency} (exact {exact(abs(note.amount))})"),
             new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.note(_latin1(f"Reason: {note.reason}"))
    pdf.note("The corrected invoice is unchanged; this note corrects it. The correction's ledger entry appears "
             "on the next monthly statement as a prior-period correction line.")
    return bytes(pdf.output())
