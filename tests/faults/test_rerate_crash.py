"""A re-rate whose worker is SIGKILLed mid-way (issue 20): resumed, it posts each tenant's difference
exactly once."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import select, text

from billing_core.ledger.tables import wallets
from tests.support.clock import TestClock
from tests.support.helpers import assert_ledger_consistent, top_up
from tests.support.polling import eventually
from tests.support.pricing import new_item

pytestmark = pytest.mark.faults


def _corrections(engine, tenant: str) -> list:
    with engine.connect() as connection:
        return list(connection.execute(text(
            "SELECT amount FROM ledger_entries WHERE tenant_id = :t AND entry_type = 'correction'"),
            {"t": tenant}).scalars())


def _waiting_on_a_lock(engine) -> bool:
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )).scalar_one() > 0


def test_a_rerate_killed_mid_way_and_resumed_posts_each_tenant_once(live, engine, make_token):
    api, clock = live.api, TestClock(engine)
    admin = make_token("ops", "billing.admin")
    item = new_item()
    tenants = sorted(f"rr-{uuid.uuid4().hex[:10]}" for _ in range(3))
    wrong = api.request("PUT", "/api/billing/pricing", admin, json={**item, "unitPrice": "0.02"})
    assert wrong.status_code == 200, wrong.text
    start = wrong.json()["price"]["effectiveFrom"]
    for count, tenant in enumerate(tenants, start=2):
        top_up(api, make_token(tenant, "billing.admin"), "100")
        for _ in range(count):
            response = api.post("/api/billing/charge", make_token(tenant, "billing.charge"), json={
                "featureKey": "calls", "items": [{**item, "quantity": "100"}], "idempotencyKey": str(uuid.uuid4())})
            assert response.status_code == 200, response.text
    try:
        clock.advance(3600)
        fixed = api.request("PUT", "/api/billing/pricing", admin, json={
            **item, "unitPrice": "0.01", "effectiveFrom": start, "correctionReason": "a digit too many"})
        assert fixed.status_code == 200, fixed.text
        scope = {"from": start, "to": (datetime.now(timezone.utc) + timedelta(days=1)).isoformat(),
                 "model": item["model"]}
        body = {**scope, "dryRun": False, "idempotencyKey": f"rr-{uuid.uuid4()}"}
        # hold the second tenant's wallet: the run posts the first, then waits there when it is killed
        holder = engine.connect()
        holder.execute(select(wallets.c.id).where(wallets.c.tenant_id == tenants[1]).with_for_update())
        try:
            started = api.post("/api/billing/rerates", admin, json=body)
            assert started.status_code == 202, started.text
            rerate_id = started.json()["rerate"]["id"]
            eventually(lambda: _corrections(engine, tenants[0]), 60, 0.05, what="the first tenant posted")
            eventually(lambda: _waiting_on_a_lock(engine), 30, 0.05, what="the run waiting on the second wallet")
            live.kill_worker()  # SIGKILL to the whole worker process group, mid-run
        finally:
            holder.rollback()
            holder.close()
        live.start_worker()
        again = api.post("/api/billing/rerates", admin, json=body)  # the same key resumes the run
        assert again.status_code == 202 and again.json()["rerate"]["id"] == rerate_id
        done = eventually(lambda: api.get(f"/api/billing/rerates/{rerate_id}", admin).json()["rerate"], 120,
                          until=lambda r: r["status"] != "running", what="the resumed re-rate")
        assert done["status"] == "completed"
        for count, tenant in enumerate(tenants, start=2):
            assert _corrections(engine, tenant) == [Decimal(count)]  # 1 per event, posted once
            assert_ledger_consistent(api, make_token, tenant)
        assert {t["tenantId"]: Decimal(t["difference"]) for t in done["tenants"]} == \
            {tenant: Decimal(count) for count, tenant in enumerate(tenants, start=2)}
    finally:
        clock.reset()
