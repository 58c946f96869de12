"""The ledger is append-only and verifiable; prices resolve by tenant and by time."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import text, update
from sqlalchemy.exc import DBAPIError

from billing_core import catalog
from billing_core.db import UnitOfWork
from billing_core.ledger.tables import wallets
from tests.support.helpers import stt_items, top_up, wallet


@pytest.mark.parametrize("statement", [
    "UPDATE ledger_entries SET amount = 0 WHERE tenant_id = :t",
    "DELETE FROM ledger_entries WHERE tenant_id = :t",
    "TRUNCATE ledger_entries CASCADE",
])
def test_database_refuses_to_change_the_ledger(api, tokens, tenant, engine, statement):
    top_up(api, tokens["admin"], "5")
    with pytest.raises(DBAPIError, match="append-only"):
        with engine.begin() as connection:
            connection.execute(text(statement), {"t": tenant})
    assert wallet(api, tokens["any"])["currentBalance"] == "5"


def test_verify_reports_a_balance_that_disagrees_with_its_entries(api, tokens, tenant, engine, make_token):
    top_up(api, tokens["admin"], "5")
    with engine.begin() as connection:  # tamper with the wallet row (the ledger itself cannot be changed)
        connection.execute(update(wallets).where(wallets.c.tenant_id == tenant).values(current_balance=Decimal("6")))
    result = api.get(f"/api/billing/ledger/verify?tenantId={tenant}", tokens["admin"]).json()
    assert result["ok"] is False and result["walletsChecked"] == 1
    wallet_id = wallet(api, tokens["admin"])["id"]
    assert {"walletId": wallet_id, "tenantId": tenant, "kind": "balance", "balance": "6",
            "sumOfEntries": "5"} in result["mismatches"]
    assert {"walletId": wallet_id, "tenantId": tenant, "kind": "grants", "balance": "6",
            "sumOfGrants": "5"} in result["mismatches"]
    with engine.begin() as connection:
        connection.execute(update(wallets).where(wallets.c.tenant_id == tenant).values(current_balance=Decimal("5")))


def test_tenant_override_wins_and_stays_private(api, tokens, tenant, engine, make_token):
    with UnitOfWork(engine) as uow:
        catalog.set_price(uow, tenant_id=tenant, key=("stt", "openai", "whisper-1", "second"),
                          unit_price=Decimal("0.00005"), description="negotiated")
        uow.commit()
    mine = api.get("/api/billing/pricing?category=stt&provider=openai&model=whisper-1&unit=second", tokens["any"])
    assert mine.json()["price"]["unitPrice"] == "0.00005" and mine.json()["price"]["scope"] == "tenant"
    listed = api.get("/api/billing/pricing?category=stt", tokens["any"]).json()["prices"]
    assert [p["unitPrice"] for p in listed] == ["0.00005"]
    other = api.get("/api/billing/pricing?category=stt&provider=openai&model=whisper-1&unit=second",
                    make_token(tenant + "-x"))
    assert other.json()["price"]["unitPrice"] == "0.0001"
    top_up(api, tokens["admin"], "1")
    charge = api.post("/api/billing/charge", tokens["charge"],
                      json={"featureKey": "f", "idempotencyKey": "k", "items": stt_items("1000")})
    assert charge.json()["usageEvent"]["totalCost"] == "0.05"


def test_price_change_applies_from_its_start_and_never_rewrites_history(api, tokens, tenant, engine):
    top_up(api, tokens["admin"], "10")
    before = api.post("/api/billing/charge", tokens["charge"],
                      json={"featureKey": "f", "idempotencyKey": "before", "items": stt_items("1000")})
    assert before.json()["usageEvent"]["totalCost"] == "0.1"
    with UnitOfWork(engine) as uow:
        catalog.set_price(uow, tenant_id=tenant, key=("stt", "openai", "whisper-1", "second"),
                          unit_price=Decimal("0.0002"), effective_from=datetime.now(timezone.utc) - timedelta(seconds=1))
        uow.commit()
    after = api.post("/api/billing/charge", tokens["charge"],
                     json={"featureKey": "f", "idempotencyKey": "after", "items": stt_items("1000")})
    assert after.json()["usageEvent"]["totalCost"] == "0.2"
    old = api.get(f"/api/billing/usage/{before.json()['usageEvent']['id']}", tokens["view"]).json()["usageEvent"]
    assert old["items"][0]["unitPrice"] == "0.0001" and old["totalCost"] == "0.1"


def test_usage_pages_summary_and_date_bounds(api, tokens, tenant, engine):
    top_up(api, tokens["admin"], "100")
    for i in range(7):
        feature = "voice-agent" if i < 5 else "campaigns"
        response = api.post("/api/billing/charge", tokens["charge"],
                            json={"featureKey": feature, "idempotencyKey": f"u-{i}", "items": stt_items("100")})
        assert response.status_code == 200
    seen, cursor = [], ""
    while True:
        page = api.get(f"/api/billing/usage?limit=3{cursor}", tokens["view"]).json()["usage"]
        assert page["summary"]["totalEvents"] == 7  # the whole range, not the page
        assert page["summary"]["totalCost"] == "0.07"
        assert page["summary"]["byFeature"] == {"campaigns": {"events": 2, "cost": "0.02"},
                                                "voice-agent": {"events": 5, "cost": "0.05"}}
        seen += [e["id"] for e in page["events"]]
        if not page["nextCursor"]:
            break
        cursor = f"&cursor={page['nextCursor']}"
    assert len(seen) == len(set(seen)) == 7
    today = datetime.now(timezone.utc).date().isoformat()
    assert api.get(f"/api/billing/usage?to={today}", tokens["view"]).json()["usage"]["summary"]["totalEvents"] == 7
    assert api.get(f"/api/billing/usage?from={today}&to={today}&featureKey=campaigns",
                   tokens["view"]).json()["usage"]["summary"]["totalEvents"] == 2
    yesterday = (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()
    assert api.get(f"/api/billing/usage?to={yesterday}", tokens["view"]).json()["usage"]["events"] == []
    entries = api.get("/api/billing/transactions?type=debit&limit=5", tokens["view"]).json()
    assert len(entries["transactions"]) == 5 and entries["nextCursor"]
    rest = api.get(f"/api/billing/transactions?type=debit&cursor={entries['nextCursor']}", tokens["view"]).json()
    assert len(rest["transactions"]) == 2 and rest["nextCursor"] is None


def test_summary_bills_only_charged_events(api, tokens):
    top_up(api, tokens["admin"], "0.015")
    for key in ("a", "b"):  # 0.01 each: the first fits, the second is rejected
        api.post("/api/billing/charge", tokens["charge"],
                 json={"featureKey": "voice-agent", "idempotencyKey": key, "items": stt_items("100")})
    summary = api.get("/api/billing/usage", tokens["view"]).json()["usage"]["summary"]
    assert summary["totalEvents"] == 2 and summary["totalCost"] == "0.01"
    assert summary["byFeature"] == {"voice-agent": {"events": 2, "cost": "0.01"}}
    assert summary["byStatus"] == {"charged": {"events": 1, "cost": "0.01"}, "rejected": {"events": 1, "cost": "0.01"}}


def test_blocked_wallet_refuses_charges(api, tokens, tenant, engine):
    top_up(api, tokens["admin"], "5")
    with engine.begin() as connection:
        connection.execute(update(wallets).where(wallets.c.tenant_id == tenant).values(status="blocked"))
    response = api.post("/api/billing/charge", tokens["charge"],
                        json={"featureKey": "f", "idempotencyKey": "k", "items": stt_items("1")})
    assert response.status_code == 403 and response.json()["error"]["code"] == "wallet_blocked"
    assert wallet(api, tokens["any"])["currentBalance"] == "5"
