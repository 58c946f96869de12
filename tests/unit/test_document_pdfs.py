"""The documents as a finance team reads them, read back with pdftotext (poppler-utils): the number,
issuer, customer and totals on page 1; long months paginate with "n / N"; receipts show net, tax and
gross, or the reverse-charge wording."""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from billing_core.invoicing.rendering import invoice_csv, invoice_pdf, receipt_csv, receipt_pdf, usage_by_feature
from tests.support.documents_sample import receipt as sample_receipt
from tests.support.documents_sample import statement


def pages(pdf: bytes) -> list[str]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "document.pdf"
        path.write_bytes(pdf)
        text = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                              text=True).stdout
    return text.split("\f")[:-1] if text.endswith("\f") else text.split("\f")


def test_page_one_has_the_number_parties_and_totals():
    document = statement(12)
    first = pages(invoice_pdf(document))[0]
    for expected in ("LAD-2026-000123", "Monthly statement 2026-10", "LAD Voice Platform GmbH", "DE123456789",
                     "Acme Contact Centers SARL", "FR12345678901", "Opening balance", "Closing balance",
                     f"{document.closing_balance} USD", f"-{document.total_usage} USD", "not a tax invoice",
                     "Usage: voice-agent"):
        assert expected in first, expected


def test_a_500_line_month_paginates_with_page_numbers():
    found = pages(invoice_pdf(statement(500)))
    total = len(found)
    assert total > 5
    for number, page in enumerate(found, start=1):
        assert re.search(rf"\b{number}\s*/\s*{total}\b", page), f"page {number} has no '{number} / {total}'"
    # every line is there, and the summary stays on page 1
    assert "Closing balance" in found[0] and "Closing balance" not in "".join(found[1:])
    assert sum(len(re.findall(r"^\s*\d+\s+(voice-agent|campaigns|transcripts|ivr)\b", page, re.M))
               for page in found) == 500


def test_the_same_numbers_in_csv_and_pdf():
    document = statement(8)
    csv_text, pdf_text = invoice_csv(document), "".join(pages(invoice_pdf(document)))
    assert "LAD-2026-000123" in csv_text
    for line in document.usage_lines:
        assert f"{line.amount:.2f}" in csv_text and f"{line.amount:.2f}" in pdf_text
    for feature, amount in usage_by_feature(document):  # page 1's summary, in the CSV as well
        assert f"feature_usage,{feature},,,,,,Usage by feature,,,,,,{amount:.2f}," in csv_text
        assert f"-{amount:.2f} USD" in pdf_text


def test_a_receipt_shows_net_tax_and_gross_or_the_reverse_charge_wording():
    text = pages(receipt_pdf(sample_receipt()))[0]
    for expected in ("Receipt", "LAD-2026-000124", "28.01", "VAT 19%", "5.32", "33.33", "Acme Contact Centers SARL",
                     "tax document"):
        assert expected in text, expected
    assert re.search(r"\b1\s*/\s*1\b", text)
    assert "LAD-2026-000124" in receipt_csv(sample_receipt())
    reverse = " ".join(pages(receipt_pdf(sample_receipt("reverse_charge")))[0].split())
    assert "Reverse charge: VAT to be accounted for by the recipient" in reverse and "FR12345678901" in reverse
    assert "VAT 19%" not in reverse
