"""The seed document's requests, end to end over HTTP with a real worker charging."""
from __future__ import annotations

import re
from decimal import Decimal

from tests.support.helpers import SEED_QUOTE_ITEMS, assert_ledger_consistent, wallet

DECIMAL = re.compile(r"^-?\d+(\.\d+)?$")


SEED_CHARGE = {
    "featureKey": "voice-agent",
    "externalReferenceId": "call_abc123",
    "idempotencyKey": "charge_call_abc123",
    "items": [
        {"category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second", "quantity": 45.5},
        {"category": "llm_prompt", "provider": "openai", "model": "gpt-4", "unit": "token", "quantity": 350},
        {"category": "llm_completion", "provider": "openai", "model": "gpt-4", "unit": "token", "quantity": 150},
        {"category": "tts", "provider": "openai", "model": "tts-1", "unit": "character", "quantity": 180},
        {"category": "telephony", "provider": "twilio", "model": "voice", "unit": "minute", "quantity": 0.75},
        {"category": "vm_infrastructure", "provider": "runpod", "model": "gpu-t4", "unit": "second", "quantity": 60},
    ],
    "metadata": {"callDuration": "45s", "callFrom": "+1234567890", "callTo": "+0987654321"},
}
# 45.5×0.0001 + 350×0.00003 + 150×0.00006 + 180×0.000015 + 0.75×0.013 + 60×0.00011, exactly
SEED_CHARGE_COST = "0.0431"


def test_get_price(api, tokens):
    response = api.get("/api/billing/pricing?category=stt&provider=openai&model=whisper-1&unit=second", tokens["any"])
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert {k: body["price"][k] for k in ("category", "provider", "model", "unit", "unitPrice", "description")} == {
        "category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second",
        "unitPrice": "0.0001", "description": "OpenAI Whisper STT",
    }


def test_default_catalog_is_loaded(api, tokens):
    prices = api.get("/api/billing/pricing", tokens["any"]).json()["prices"]
    table = {(p["category"], p["provider"], p["model"], p["unit"]): p["unitPrice"] for p in prices
             if not p["category"].startswith("test_")}  # items other tests add to the global catalog
    assert table == {
        ("stt", "openai", "whisper-1", "second"): "0.0001",
        ("llm", "openai", "gpt-4", "token"): "0.00003",
        ("llm_prompt", "openai", "gpt-4", "token"): "0.00003",
        ("llm_completion", "openai", "gpt-4", "token"): "0.00006",
        ("tts", "openai", "tts-1", "character"): "0.000015",
        ("telephony", "twilio", "voice", "minute"): "0.013",
        ("vm_infrastructure", "runpod", "gpu-t4", "second"): "0.00011",
    }


def test_quote_totals_seed_example(api, tokens):
    response = api.post("/api/billing/quote", tokens["any"], json={"items": SEED_QUOTE_ITEMS})
    assert response.status_code == 200
    quote = response.json()["quote"]
    assert quote["totalCost"] == "0.037"
    assert quote["currency"] == "USD"
    assert [(i["category"], i["unitPrice"], i["totalCost"]) for i in quote["items"]] == [
        ("stt", "0.0001", "0.006"), ("llm", "0.00003", "0.015"),
        ("tts", "0.000015", "0.003"), ("telephony", "0.013", "0.013"),
    ]
    assert [i["quantity"] for i in quote["items"]] == ["60", "500", "200", "1"]


def test_new_wallet_is_empty(api, tokens, tenant):
    body = api.get("/api/billing/wallet", tokens["any"]).json()
    assert body["success"] is True
    assert body["wallet"]["tenantId"] == tenant
    assert {k: body["wallet"][k] for k in ("currentBalance", "reservedBalance", "availableBalance", "currency", "status")} == {
        "currentBalance": "0", "reservedBalance": "0", "availableBalance": "0", "currency": "USD", "status": "active",
    }


def test_seed_walkthrough_topup_charge_usage(api, tokens, tenant, make_token):
    topup = api.post("/api/billing/topup", tokens["admin"], json={
        "amount": 100, "description": "Monthly credit allocation", "idempotencyKey": "topup_202512_abc123"})
    assert topup.status_code == 200, topup.text
    transaction = topup.json()["transaction"]
    assert transaction["type"] == "topup"
    assert (transaction["amount"], transaction["balanceBefore"], transaction["balanceAfter"]) == ("100", "0", "100")
    assert transaction["description"] == "Monthly credit allocation"
    assert transaction["createdAt"].endswith("Z")

    charge = api.post("/api/billing/charge", tokens["charge"], json=SEED_CHARGE)
    assert charge.status_code == 200, charge.text
    body = charge.json()
    assert body["success"] is True and body["taskId"]
    assert body["usageEvent"]["featureKey"] == "voice-agent"
    assert body["usageEvent"]["status"] == "charged"
    assert body["usageEvent"]["totalCost"] == SEED_CHARGE_COST
    assert body["usageEvent"]["chargedAt"]
    assert body["transaction"]["type"] == "debit"
    assert body["transaction"]["amount"] == "-" + SEED_CHARGE_COST
    assert (body["transaction"]["balanceBefore"], body["transaction"]["balanceAfter"]) == ("100", "99.9569")

    assert wallet(api, tokens["any"])["currentBalance"] == "99.9569"

    history = api.get("/api/billing/usage?from=2020-01-01&to=2099-12-31&featureKey=voice-agent", tokens["view"])
    assert history.status_code == 200
    usage = history.json()["usage"]
    assert [e["id"] for e in usage["events"]] == [body["usageEvent"]["id"]]
    assert usage["events"][0]["status"] == "charged" and usage["events"][0]["createdAt"]
    assert usage["summary"] == {
        "totalEvents": 1, "totalCost": SEED_CHARGE_COST,
        "byFeature": {"voice-agent": {"events": 1, "cost": SEED_CHARGE_COST}},
        "byStatus": {"charged": {"events": 1, "cost": SEED_CHARGE_COST}},
    }

    detail = api.get(f"/api/billing/usage/{body['usageEvent']['id']}", tokens["view"]).json()["usageEvent"]
    assert [i["unitPrice"] for i in detail["items"]] == ["0.0001", "0.00003", "0.00006", "0.000015", "0.013", "0.00011"]
    assert sum(Decimal(i["totalCost"]) for i in detail["items"]) == Decimal(SEED_CHARGE_COST)
    assert detail["metadata"]["callFrom"] == "+1234567890"
    assert detail["transactionId"] == body["transaction"]["id"]

    task = api.get(f"/api/billing/tasks/{body['taskId']}", tokens["charge"]).json()["task"]
    assert task["state"] == "charged" and task["transaction"]["id"] == body["transaction"]["id"]

    entries = api.get("/api/billing/transactions", tokens["view"]).json()["transactions"]
    assert [e["type"] for e in entries] == ["debit", "topup"]  # newest first
    for entry in entries:
        for key in ("amount", "balanceBefore", "balanceAfter"):
            assert DECIMAL.match(entry[key])
    assert_ledger_consistent(api, make_token, tenant)


def test_async_charge_answers_202_with_location(api, tokens):
    api.post("/api/billing/topup", tokens["admin"], json={"amount": "5", "idempotencyKey": "async-topup"})
    response = api.post("/api/billing/charge", tokens["charge"],
                        json={**SEED_CHARGE, "idempotencyKey": "async-1"}, headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["usageEvent"]["status"] == "pending" and body["usageEvent"]["id"] and body["usageEvent"]["createdAt"]
    assert response.headers["Location"] == f"/api/billing/tasks/{body['taskId']}"
    from tests.support.helpers import wait_until_settled

    settled = wait_until_settled(api, tokens["charge"], [body["taskId"]])
    assert settled[body["taskId"]]["state"] == "charged"

    zero_wait = api.post("/api/billing/charge?wait=0", tokens["charge"], json={**SEED_CHARGE, "idempotencyKey": "async-2"})
    assert zero_wait.status_code == 202
