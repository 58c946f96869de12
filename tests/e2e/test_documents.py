"""Documents on the real stack: the operator's issuer, the tenant's billing details and tax treatment,
a receipt for each paid grant (operator top-up, Stripe payment) and none for promotions or a replayed
webhook, every document type under /invoices with its number, and the receipt's PDF read back."""
from __future__ import annotations

import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import requests

from billing_core import exactjson
from tests.support.polling import eventually
from tests.support.stripe_events import checkout_completed, event_row, post_raw, send, sign

RECEIPTS = "/api/billing/invoices?type=receipt"


def _receipts(api, token: str) -> list[dict[str, Any]]:
    response = api.get(RECEIPTS, token)
    assert response.status_code == 200, response.text
    return response.json()["invoices"]


def _pdf_text(body: bytes) -> str:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "document.pdf"
        path.write_bytes(body)
        return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                              text=True).stdout


def test_issuer_customer_tax_and_receipts_of_paid_grants(api, tenant, tokens, make_token):
    admin, manage = tokens["admin"], make_token(tenant, "billing.manage")
    issuer = {"legalName": "LAD Voice Platform GmbH", "address": "Torstrasse 1, 10119 Berlin",
              "taxId": "DE123456789", "email": "billing@lad.example", "numberPrefix": "LAD-"}
    assert api.request("PUT", "/api/billing/settings/issuer", manage, json=issuer).status_code == 403
    answer = api.request("PUT", "/api/billing/settings/issuer", admin, json=issuer)
    assert answer.status_code == 200, answer.text
    assert answer.json()["issuer"] == issuer
    bad = api.request("PUT", "/api/billing/settings/issuer", admin, json={**issuer, "numberPrefix": "LAD-7"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "numberPrefix"

    customer = {"legalName": "Acme SARL", "address": "1 rue X, Paris", "taxId": "FR12345678901"}
    answer = api.request("PUT", "/api/billing/settings/billing-details", manage, json=customer)
    assert answer.status_code == 200, answer.text
    assert api.request("PUT", "/api/billing/settings/billing-details", tokens["view"], json=customer).status_code == 403

    assert api.request("PATCH", "/api/billing/wallet", manage, json={"tax": {"mode": "exempt"}}).status_code == 403
    bad = api.request("PATCH", "/api/billing/wallet", admin, json={"tax": {"mode": "rate"}})
    assert bad.status_code == 400, bad.text
    answer = api.request("PATCH", "/api/billing/wallet", admin,
                         json={"tax": {"mode": "rate", "rate": "0.077", "label": "MWST 7.7%"}})
    assert answer.status_code == 200, answer.text
    assert answer.json()["tax"] == {"mode": "rate", "rate": "0.077", "label": "MWST 7.7%", "wording": None}

    grants = {}
    for kind, amount in (("paid", "33.33"), ("promotional", "5")):
        response = api.post("/api/billing/topup", admin, json={"amount": amount, "kind": kind,
                                                               "idempotencyKey": str(uuid.uuid4())})
        assert response.status_code == 200, response.text
        grants[kind] = response.json()["grant"]["id"]
    [receipt] = _receipts(api, tokens["view"])
    assert {k: receipt[k] for k in ("type", "net", "tax", "gross", "taxLabel", "grantId", "status")} == {
        "type": "receipt", "net": "30.95", "tax": "2.38", "gross": "33.33", "taxLabel": "MWST 7.7%",
        "grantId": grants["paid"], "status": "finalized"}
    assert receipt["number"].startswith("LAD-") and receipt["number"][4:].isdigit()
    assert receipt["issuer"]["legalName"] == "LAD Voice Platform GmbH" and receipt["customer"] == customer
    assert api.get(f"/api/billing/invoices/{receipt['id']}", tokens["view"]).json()["invoice"] == receipt
    other = make_token(f"other-{tenant}", "billing.view")
    assert api.get(f"/api/billing/invoices/{receipt['id']}", other).status_code == 404

    pdf = api.get(f"/api/billing/invoices/{receipt['id']}.pdf", tokens["view"])
    assert pdf.status_code == 200 and pdf.headers["Content-Type"] == "application/pdf"
    text = _pdf_text(pdf.content)
    for expected in (receipt["number"], "LAD Voice Platform GmbH", "Acme SARL", "30.95", "2.38", "33.33", "MWST 7.7%"):
        assert expected in text, expected
    as_csv = api.get(f"/api/billing/invoices/{receipt['id']}.csv", tokens["view"]).text
    assert receipt["number"] in as_csv and "30.95" in as_csv
    assert api.get("/api/billing/invoices?type=credit_note", tokens["view"]).json()["invoices"] == []

    # the portal lists the receipt and serves its PDF
    link = api.post("/api/billing/portal-sessions", manage, json={})
    assert link.status_code == 200, link.text
    session = requests.Session()
    assert session.get(link.json()["portalSession"]["url"], timeout=30).status_code == 200
    base = link.json()["portalSession"]["url"].split("/open")[0]
    page = session.get(f"{base}/invoices", timeout=30)
    assert page.status_code == 200 and receipt["number"] in page.text and "33.33" in page.text
    download = session.get(f"{base}/invoices/{receipt['id']}.pdf", timeout=30)
    assert download.status_code == 200 and receipt["number"] in _pdf_text(download.content)


def test_a_stripe_payment_issues_one_receipt_and_its_replay_none(api, engine, tenant, tokens):
    api.request("PATCH", "/api/billing/wallet", tokens["admin"], json={"tax": {"mode": "reverse_charge"}})
    payment = f"pi_test_{uuid.uuid4().hex}"
    event = checkout_completed(tenant, payment, 1234)
    send(api, event)
    [receipt] = eventually(lambda: _receipts(api, tokens["view"]), 30, 0.1, what="a receipt")
    assert (receipt["net"], receipt["tax"], receipt["gross"], receipt["taxLabel"]) == ("12.34", "0", "12.34", None)
    assert "Reverse charge" in receipt["taxWording"] and receipt["source"] == "stripe"
    body = exactjson.dumps(event)
    assert post_raw(api, body, sign(body)).json() == {"received": True, "duplicate": True}
    # the same payment told by its other event credits nothing and issues nothing
    again = {**event, "id": f"evt_test_{uuid.uuid4().hex}"}
    send(api, again)
    handled = eventually(lambda: event_row(engine, again["id"]), 30, 0.1, what="the event handled",
                         until=lambda row: row is not None and row.status != "received")
    assert handled.status == "ignored", handled.detail
    assert len(_receipts(api, tokens["view"])) == 1
