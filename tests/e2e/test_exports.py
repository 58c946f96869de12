"""Exports on the real stack: POST /exports (billing.admin: every tenant; billing.manage: its own rows),
GET /exports/<id> until the worker has written the files, the nightly job, and the files read back
with pyarrow against the database. The day must be over, so the database clock moves a day ahead and
"yesterday" is the real today."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import text

from tests.support.jobs import run_job
from tests.support.polling import eventually


def _top_up(api, token: str, amount: str) -> None:
    response = api.post("/api/billing/topup", token, json={"amount": amount, "idempotencyKey": str(uuid.uuid4())})
    assert response.status_code == 200, response.text


def _finished(api, token: str, export_id: str) -> dict:
    found = eventually(lambda: api.get(f"/api/billing/exports/{export_id}", token).json(), 60, 0.2,
                       what="the export finished", until=lambda body: body["export"]["status"] != "running")
    assert found["export"]["status"] == "completed", found
    return found["export"]


def _ledger_rows(engine, day, tenant: str | None = None) -> int:
    start = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT count(*) FROM ledger_entries WHERE created_at >= :s AND created_at < :e"
            + ("" if tenant is None else " AND tenant_id = :t")),
            {"s": start, "e": start + timedelta(days=1), "t": tenant}).scalar_one()


def test_exports_by_the_operator_by_a_tenant_and_by_the_nightly_job(api, live, engine, clock, tenant, make_token):
    admin, manage = make_token(tenant, "billing.admin"), make_token(tenant, "billing.manage")
    other = f"other-{tenant}"
    _top_up(api, admin, "20")
    _top_up(api, make_token(other, "billing.admin"), "30")
    with engine.connect() as connection:
        today = connection.execute(text("SELECT now()")).scalar_one().astimezone(timezone.utc).date()
    root = Path(live.env["EXPORT_URL"])

    assert api.post("/api/billing/exports", make_token(tenant, "billing.view"), json={}).status_code == 403
    assert api.post("/api/billing/exports", manage, json={"tenantId": other}).status_code == 403
    bad = api.post("/api/billing/exports", admin, json={"tables": ["ledger_entries", "nope"]})
    assert bad.status_code == 400, bad.text
    assert api.post("/api/billing/exports", admin, json={"date": today.isoformat()}).status_code == 400  # not over

    clock.advance(24 * 3600 + 60)
    started = api.post("/api/billing/exports", admin, json={"tables": ["ledger_entries", "documents"]})
    assert started.status_code == 202, started.text
    assert started.json()["export"]["status"] in ("running", "completed")
    export = _finished(api, admin, started.json()["export"]["id"])
    assert (export["date"], export["tenantId"], [f["table"] for f in export["files"]]) == \
        (today.isoformat(), None, ["ledger_entries", "documents"])
    ledger = pq.read_table(root / export["files"][0]["path"])
    assert ledger.num_rows == export["files"][0]["rows"] == _ledger_rows(engine, today)
    assert {tenant, other} <= set(ledger.column("tenant_id").to_pylist())
    assert ledger.schema.field("amount").type == pa.decimal128(38, 24)

    # the tenant's own export: its rows only; the operator's runs are not its to see
    mine = api.post("/api/billing/exports", manage, json={"tables": ["ledger_entries"]})
    assert mine.status_code == 202, mine.text
    scoped = _finished(api, manage, mine.json()["export"]["id"])
    assert scoped["tenantId"] == tenant
    rows = pq.read_table(root / scoped["files"][0]["path"])
    assert set(rows.column("tenant_id").to_pylist()) == {tenant}
    assert rows.num_rows == _ledger_rows(engine, today, tenant)
    assert api.get(f"/api/billing/exports/{export['id']}", manage).status_code == 404

    # the nightly job: yesterday, every table, every tenant; its files replace the operator's
    outcome = run_job("export-yesterday")
    assert outcome["status"] == "completed" and outcome["files"] == 5 and outcome["day"] == today.isoformat()
    assert pq.read_table(root / export["files"][0]["path"]).num_rows == _ledger_rows(engine, today)
