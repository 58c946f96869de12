"""Exactly-once charging under concurrency, on the real stack."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from sqlalchemy import func, select

from billing_core.ledger.tables import ledger_entries
from billing_core.usage.tables import usage_events
from tests.support.helpers import Api, assert_ledger_consistent, stt_items, top_up, wait_until_settled, wallet


def test_same_charge_twenty_times_concurrently_charges_once(live, tokens, tenant, engine, make_token):
    top_up(live.api, tokens["admin"], "10")
    body = {"featureKey": "voice-agent", "idempotencyKey": "call-42", "items": stt_items("10000")}

    def send(_):
        return Api(live.api.base_url).post("/api/billing/charge", tokens["charge"], json=body)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(send, range(20)))
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses if r.status_code != 200]
    assert len({r.json()["usageEvent"]["id"] for r in responses}) == 1
    assert len({r.json()["transaction"]["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 19
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(usage_events)
                                  .where(usage_events.c.tenant_id == tenant)).scalar_one() == 1
        assert connection.execute(select(func.count()).select_from(ledger_entries).where(
            ledger_entries.c.tenant_id == tenant, ledger_entries.c.entry_type == "debit")).scalar_one() == 1
    assert wallet(live.api, tokens["any"])["currentBalance"] == "9"
    assert_ledger_consistent(live.api, make_token, tenant)


def test_same_key_different_request_is_409(api, tokens, tenant):
    top_up(api, tokens["admin"], "10")
    first = api.post("/api/billing/charge", tokens["charge"],
                     json={"featureKey": "f", "idempotencyKey": "k", "items": stt_items("1")})
    assert first.status_code == 200
    second = api.post("/api/billing/charge", tokens["charge"],
                      json={"featureKey": "f", "idempotencyKey": "k", "items": stt_items("2")})
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "idempotency_conflict"
    assert second.json()["error"]["details"]["field"] == "idempotencyKey"
    # the header is the same key; a numeric and a string quantity are the same request
    third = api.post("/api/billing/charge", tokens["charge"], headers={"Idempotency-Key": "k"},
                     json={"featureKey": "f", "items": [{**stt_items("1")[0], "quantity": 1}]})
    assert third.status_code == 200 and third.headers["Idempotent-Replayed"] == "true"
    assert third.json()["transaction"]["id"] == first.json()["transaction"]["id"]


def test_topup_replay_and_conflict(api, tokens):
    body = {"amount": "12.5", "idempotencyKey": "topup-1", "description": "credits"}
    first = api.post("/api/billing/topup", tokens["admin"], json=body)
    again = api.post("/api/billing/topup", tokens["admin"], json={**body, "amount": 12.50})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["transaction"] == first.json()["transaction"]
    conflict = api.post("/api/billing/topup", tokens["admin"], json={**body, "amount": "13"})
    assert conflict.status_code == 409
    assert wallet(api, tokens["any"])["currentBalance"] == "12.5"


def test_rejected_charge_replays_its_rejection(api, tokens):
    body = {"featureKey": "f", "idempotencyKey": "broke", "items": stt_items("10")}
    first = api.post("/api/billing/charge", tokens["charge"], json=body)
    assert first.status_code == 402
    error = first.json()["error"]
    assert error["code"] == "insufficient_balance"
    assert error["details"]["required"] == "0.001" and error["details"]["available"] == "0"
    again = api.post("/api/billing/charge", tokens["charge"], json=body)
    assert again.status_code == 402 and again.headers["Idempotent-Replayed"] == "true"
    task = api.get(f"/api/billing/tasks/{error['details']['taskId']}", tokens["charge"]).json()["task"]
    assert task["state"] == "rejected" and task["error"]["code"] == "insufficient_balance"
    assert "transaction" not in task


def test_500_concurrent_charges_against_balance_for_300(live, tokens, tenant, engine, make_token):
    top_up(live.api, tokens["admin"], "300")
    clients = [Api(live.api.base_url) for _ in range(16)]

    def send(i: int) -> str:
        response = clients[i % 16].post(
            "/api/billing/charge?wait=0", tokens["charge"],
            json={"featureKey": "campaign", "idempotencyKey": f"call-{i}", "items": stt_items("10000")},
        )
        assert response.status_code == 202, response.text
        return response.json()["taskId"]

    with ThreadPoolExecutor(16) as pool:
        task_ids = list(pool.map(send, range(500)))
    states = wait_until_settled(live.api, tokens["charge"], task_ids, timeout=120)
    outcomes = [t["state"] for t in states.values()]
    assert outcomes.count("charged") == 300
    assert outcomes.count("rejected") == 200
    assert {t["error"]["code"] for t in states.values() if t["state"] == "rejected"} == {"insufficient_balance"}
    balances = [Decimal(t["transaction"]["balanceAfter"]) for t in states.values() if t["state"] == "charged"]
    assert min(balances) == 0 and all(b >= 0 for b in balances)
    assert wallet(live.api, tokens["any"])["currentBalance"] == "0"
    assert_ledger_consistent(live.api, make_token, tenant)


def test_database_down_answers_503(tenant):
    """With PostgreSQL unreachable, a charge is refused with a clear 503 and nothing is promised."""
    from billing_core.bootstrap import Settings
    from devstack.servers import free_port
    from web.app import create_app
    from web.auth import TokenSettings, issue_token

    settings = Settings()
    dead = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nowhere"
    tokens = TokenSettings("s", None, None, None)
    app = create_app({"LAD_SETTINGS": settings.model_copy(update={"database_url": dead}), "LAD_TOKENS": tokens})
    token = issue_token(tokens, tenant_id=tenant, capabilities=["billing.charge"])
    response = app.test_client().post("/api/billing/charge", headers={"Authorization": f"Bearer {token}"},
                                      json={"featureKey": "f", "idempotencyKey": str(uuid.uuid4()), "items": stt_items("1")})
    assert response.status_code == 503
    assert response.json["error"]["code"] == "unavailable"
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503 and ready.json["checks"]["postgres"].startswith("error")
