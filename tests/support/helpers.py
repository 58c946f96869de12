"""Helpers shared by the tests that talk to the running service."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import requests

from tests.support.polling import eventually

# the README's seed quote: 60 s of speech to text, 500 prompt tokens, 200 characters of speech, one minute
SEED_QUOTE_ITEMS = [
    {"category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second", "quantity": 60},
    {"category": "llm", "provider": "openai", "model": "gpt-4", "unit": "token", "quantity": 500},
    {"category": "tts", "provider": "openai", "model": "tts-1", "unit": "character", "quantity": 200},
    {"category": "telephony", "provider": "twilio", "model": "voice", "unit": "minute", "quantity": 1},
]


class Api:
    """A small HTTP client for the running service."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.session = requests.Session()

    def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.session.request(method, self.base_url + path, headers=headers, timeout=60, **kwargs)

    def get(self, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, token, **kwargs)

    def post(self, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, token, **kwargs)


def stt_items(seconds: str = "10000") -> list[dict[str, Any]]:
    """One item costing seconds × 0.0001 (10000 seconds = exactly 1)."""
    return [{"category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second", "quantity": seconds}]


def top_up(api: Api, admin_token: str, amount: str) -> None:
    response = api.post("/api/billing/topup", admin_token,
                        json={"amount": amount, "idempotencyKey": f"topup-{uuid.uuid4()}"})
    assert response.status_code == 200, response.text


def wallet(api: Api, token: str) -> dict[str, Any]:
    response = api.get("/api/billing/wallet", token)
    assert response.status_code == 200, response.text
    return response.json()["wallet"]


def wait_until_settled(api: Api, token: str, task_ids: list[str], timeout: float = 60) -> dict[str, dict]:
    """Poll GET /tasks until no task is pending (tests may poll; the service never does)."""
    states: dict[str, dict] = {}
    pending = set(task_ids)

    def settled() -> bool:
        for task_id in list(pending):
            response = api.get(f"/api/billing/tasks/{task_id}", token)
            assert response.status_code == 200, response.text
            task = response.json()["task"]
            if task["state"] != "pending":
                states[task_id] = task
                pending.discard(task_id)
        return not pending

    eventually(settled, timeout, what=f"every charge settled ({len(pending)} still pending)")
    return states


def assert_ledger_consistent(api: Api, make_token: Callable[..., str], tenant_id: str) -> None:
    admin = make_token(tenant_id, "billing.admin")
    result = api.get(f"/api/billing/ledger/verify?tenantId={tenant_id}", admin).json()
    assert result["ok"], result
    current = Decimal(wallet(api, admin)["currentBalance"])
    total, cursor = Decimal(0), ""
    while True:
        page = api.get(f"/api/billing/transactions?limit=500{cursor}", admin).json()
        total += sum((Decimal(e["amount"]) for e in page["transactions"]), Decimal(0))
        if not page["nextCursor"]:
            break
        cursor = f"&cursor={page['nextCursor']}"
    assert current == total
    assert current >= 0
