"""Batch ingestion (POST /charges) and group commit under racing workers."""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select

from billing_core.ledger.tables import ledger_entries
from tests.support.helpers import assert_ledger_consistent, stt_items, top_up, wait_until_settled, wallet
from tests.support.polling import eventually


def event(key: str, seconds: str = "100", **overrides):
    return {"featureKey": "campaign", "idempotencyKey": key, "items": stt_items(seconds), **overrides}


def test_batch_gives_each_event_its_own_outcome(api, tokens, tenant, make_token):
    top_up(api, tokens["admin"], "1")
    earlier = api.post("/api/billing/charge", tokens["charge"], json=event("seen-before"))
    assert earlier.status_code == 200
    batch = [
        event("a"),                                                   # 0 accepted
        event("b", seconds="-1"),                                     # 1 bad quantity
        {**event("c"), "items": [{**stt_items("1")[0], "model": "whisper-9"}]},  # 2 no price
        event("seen-before"),                                         # 3 replay of an earlier request
        event("a"),                                                   # 4 same key, same body: replay of 0
        event("a", seconds="200"),                                    # 5 same key, other body: conflict
        event("seen-before", seconds="300"),                          # 6 conflict with the earlier request
        event("d", seconds="20000"),                                  # 7 accepted, but more than the balance
        event("e"),                                                   # 8 accepted, cheaper: still fits
    ]
    response = api.post("/api/billing/charges", tokens["charge"], json={"events": batch})
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(9))
    assert [r["status"] for r in results] == [
        "accepted", "error", "error", "replayed", "replayed", "error", "error", "accepted", "accepted"]
    assert results[1]["error"]["code"] == "validation_error"
    assert results[1]["error"]["details"]["field"] == "events[1].items[0].quantity"
    assert results[2]["error"]["code"] == "price_not_found" and results[2]["error"]["details"]["index"] == 0
    assert results[3]["usageEventId"] == earlier.json()["usageEvent"]["id"]
    assert results[4]["taskId"] == results[0]["taskId"]
    assert {results[5]["error"]["code"], results[6]["error"]["code"]} == {"idempotency_conflict"}
    assert all(r["taskId"] is None and r["usageEventId"] is None for r in results if r["status"] == "error")

    states = wait_until_settled(api, tokens["charge"], [results[i]["taskId"] for i in (0, 7, 8)])
    assert [states[results[i]["taskId"]]["state"] for i in (0, 7, 8)] == ["charged", "rejected", "charged"]
    assert states[results[7]["taskId"]]["error"]["code"] == "insufficient_balance"
    assert wallet(api, tokens["any"])["currentBalance"] == "0.97"
    assert_ledger_consistent(api, make_token, tenant)

    again = api.post("/api/billing/charges", tokens["charge"], json={"events": batch[:1]})
    assert again.json()["results"][0]["status"] == "replayed"


def test_batch_limits(api, tokens):
    too_many = api.post("/api/billing/charges", tokens["charge"], json={"events": [event(str(i)) for i in range(1001)]})
    assert too_many.status_code == 400 and too_many.json()["error"]["details"]["field"] == "events"
    empty = api.post("/api/billing/charges", tokens["charge"], json={"events": []})
    assert empty.status_code == 400
    no_capability = api.post("/api/billing/charges", tokens["view"], json={"events": [event("x")]})
    assert no_capability.status_code == 403
    other_tenant = api.post("/api/billing/charges", tokens["charge"], json={"events": [event("x", tenantId="someone-else")]})
    assert other_tenant.json()["results"][0]["error"]["details"]["field"] == "events[0].tenantId"


def test_a_full_batch_of_1000_is_accepted_and_charged(api, tokens, tenant, make_token, engine):
    top_up(api, tokens["admin"], "100")
    response = api.post("/api/billing/charges", tokens["charge"],
                        json={"events": [event(f"k-{i}", metadata={"call": i}) for i in range(1000)]})
    assert response.status_code == 202
    results = response.json()["results"]
    assert {r["status"] for r in results} == {"accepted"}
    eventually(lambda: Decimal(wallet(api, tokens["any"])["currentBalance"]) == 90, 60, what="every charge settled")
    assert wallet(api, tokens["any"])["currentBalance"] == "90"  # 1000 × 0.01
    assert_ledger_consistent(api, make_token, tenant)


def test_five_workers_race_for_one_wallets_10000_pending_events(live, tokens, tenant, make_token, engine):
    """Every event charged exactly once, with an unbroken balance chain, while five worker processes
    (the suite's own and four more) each keep claiming groups of the same wallet's events."""
    from tasks.usage import charge_wallet

    top_up(live.api, tokens["admin"], "90")  # 9,000 of the 10,000 fit: the rest must be rejected
    extra = [live.stack.start_worker(log=live.logs / f"racer-{n}.log", concurrency=1, name=f"racer-{n}")
             for n in range(4)]
    try:
        task_ids = []
        for chunk in range(10):
            response = live.api.post("/api/billing/charges", tokens["charge"], json={
                "events": [event(f"race-{chunk}-{i}") for i in range(1000)]})
            task_ids += [r["taskId"] for r in response.json()["results"]]
        for _ in range(20):  # wake-ups to spare, so every worker process has groups to race for
            charge_wallet.apply_async(args=[tenant])
        def debits() -> int:
            with engine.connect() as connection:
                return connection.execute(select(func.count()).select_from(ledger_entries).where(
                    ledger_entries.c.tenant_id == tenant, ledger_entries.c.entry_type == "debit")).scalar_one()

        eventually(debits, 180, 0.5, what="9,000 debits", until=lambda done: done == 9000)
    finally:
        for n in range(4):
            live.stack.stop_process(f"racer-{n}")
    states = wait_until_settled(live.api, tokens["charge"], task_ids[:50] + task_ids[-50:], timeout=60)
    assert len(states) == 100
    with engine.connect() as connection:
        per_event = connection.execute(
            select(ledger_entries.c.usage_event_id, func.count()).where(
                ledger_entries.c.tenant_id == tenant, ledger_entries.c.entry_type == "debit")
            .group_by(ledger_entries.c.usage_event_id)).all()
    assert len(per_event) == 9000 and {count for _, count in per_event} == {1}
    assert wallet(live.api, tokens["any"])["currentBalance"] == "0"
    summary = live.api.get("/api/billing/usage", tokens["view"]).json()["usage"]["summary"]
    assert summary["byStatus"]["charged"]["events"] == 9000 + 0 and summary["byStatus"]["rejected"]["events"] == 1000
    assert_ledger_consistent(live.api, make_token, tenant)
    assert all(p.poll() is not None for p in extra)


def test_a_wallets_charges_are_settled_in_arrival_order(api, tokens, tenant, make_token):
    """Funds for 300 of 0.01: the first 300 of a batch are charged, the 301st is rejected, and a
    cheaper charge after it still fits."""
    top_up(api, tokens["admin"], "3.005")
    batch = [event(f"o-{i}") for i in range(302)] + [event("cheap", seconds="50")]
    response = api.post("/api/billing/charges", tokens["charge"], json={"events": batch})
    task_ids = [r["taskId"] for r in response.json()["results"]]
    states = wait_until_settled(api, tokens["charge"], task_ids)
    outcomes = [states[t]["state"] for t in task_ids]
    assert outcomes == ["charged"] * 300 + ["rejected", "rejected", "charged"]
    balances = [states[t]["transaction"]["balanceAfter"] for t in task_ids[:300]]
    assert balances[0] == "2.995" and balances[-1] == "0.005"
    assert wallet(api, tokens["any"])["currentBalance"] == "0"
    assert_ledger_consistent(api, make_token, tenant)
