"""Operations on the real stack: the beat schedule, jobs on demand, hourly reconciliation, /metrics
and request ids that follow a charge from HTTP to the ledger."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from decimal import Decimal

from sqlalchemy import text, update

from billing_core.ledger.tables import wallets
from tests.support.helpers import stt_items, top_up
from tests.support.polling import eventually


def test_the_schedule_is_utc_crontab_entries_that_expire(live):  # live: the queue names are set
    from celery.schedules import crontab

    from billing_core.bootstrap import settings
    from tasks.config import celery_config

    config = celery_config(settings())
    assert config["timezone"] == "UTC" and config["enable_utc"]
    for name, entry in config["beat_schedule"].items():
        assert entry["options"]["expires"] > 0, name
        if name != "sweep-pending-charges":  # sub-minute in the test stack only
            assert isinstance(entry["schedule"], crontab), name
    assert {"expire-credits", "reconcile-ledgers", "sweep-pending-charges", "sweep-stripe-events"} <= set(
        config["beat_schedule"])


def test_a_job_runs_on_demand_from_the_cli(live):
    env = {**live.env, "PATH": f"{sys.prefix}/bin"}
    done = subprocess.run([sys.executable, "-m", "devstack.job", "expire-credits"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) >= 0
    unknown = subprocess.run([sys.executable, "-m", "devstack.job", "no-such-job"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert unknown.returncode == 2 and "reconcile-ledgers" in unknown.stderr




def test_reconciliation_reports_a_tampered_wallet_and_changes_nothing(api, tokens, tenant, engine, live):
    from tasks.app import celery_app

    top_up(api, tokens["admin"], "5")
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM reconciliation_runs"))
        connection.execute(update(wallets).where(wallets.c.tenant_id == tenant).values(current_balance=Decimal("7")))
    try:
        # exactly as beat runs it: the task, through the broker, on the live worker
        celery_app.send_task("billing.reconcile_ledgers")

        def recorded() -> object:
            with engine.connect() as connection:
                return connection.execute(text("SELECT ok, mismatches FROM reconciliation_runs")).first()

        run = eventually(recorded, 60, what="the reconciliation run recorded", until=lambda row: row is not None)
        with engine.connect() as connection:
            balance = connection.execute(text("SELECT current_balance FROM wallets WHERE tenant_id = :t"),
                                         {"t": tenant}).scalar_one()
        assert run is not None
        assert run.ok is False and any(m["tenantId"] == tenant for m in run.mismatches)
        assert balance == 7  # reported, never "fixed"
        assert "lad_reconciliation_mismatches" in api.get("/metrics").text
    finally:
        with engine.begin() as connection:
            connection.execute(update(wallets).where(wallets.c.tenant_id == tenant)
                               .values(current_balance=Decimal("5")))


def _sample(metrics_text: str, name: str, **labels: str) -> Decimal:
    total = Decimal(0)
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += Decimal(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_requests_and_charges_across_processes(api, tokens):
    before = api.get("/metrics").text
    top_up(api, tokens["admin"], "1")
    assert api.post("/api/billing/charge", tokens["charge"], json={"featureKey": "f",
                                                                   "items": stt_items("1000")}).status_code == 200
    refused = api.post("/api/billing/charge", tokens["charge"], json={"featureKey": "f", "items": stt_items("100000")})
    assert refused.status_code == 402
    after = api.get("/metrics")
    assert after.status_code == 200 and after.headers["Content-Type"].startswith("text/plain")
    body = after.text
    for name, labels, at_least in [
        ("lad_http_requests_total", {"endpoint": "/api/billing/charge", "method": "POST", "status": "200"}, 1),
        ("lad_charges_accepted_total", {}, 2),
        ("lad_charges_settled_total", {"outcome": "charged"}, 1),  # counted by the worker processes
        ("lad_charges_settled_total", {"outcome": "rejected", "reason": "insufficient_balance"}, 1),
        ("lad_charge_commit_seconds_count", {}, 2),
        ("lad_http_request_duration_seconds_count", {"endpoint": "/api/billing/charge"}, 2),
    ]:
        assert _sample(body, name, **labels) - _sample(before, name, **labels) >= at_least, name
    assert "lad_pending_charges " in body and "lad_pending_charge_age_seconds " in body


def test_one_request_id_follows_a_charge_from_http_to_the_ledger(api, tokens, live):
    top_up(api, tokens["admin"], "1")
    request_id = f"req-{uuid.uuid4().hex}"
    response = api.post("/api/billing/charge", tokens["charge"], headers={"X-Request-Id": request_id},
                        json={"featureKey": "f", "items": stt_items("1000")})
    assert response.status_code == 200 and response.headers["X-Request-Id"] == request_id
    event_id = response.json()["usageEvent"]["id"]
    def logged() -> list[dict]:  # log files are written by other processes
        return [json.loads(line) for path in ("web.log", "worker.log")
                for line in (live.logs / path).read_text().splitlines() if request_id in line]

    lines = eventually(logged, 30, what="the request's log lines",
                       until=lambda found: {"request", "charge accepted", "charge settled"} <= {f["event"] for f in found})
    events = {line["event"] for line in lines}
    assert {"request", "charge accepted", "charge settled"} <= events, lines
    settled = next(line for line in lines if line["event"] == "charge settled")
    assert settled["usage_event_id"] == event_id and settled["status"] == "charged" and settled["task_id"]
    generated = api.get("/api/billing/wallet", tokens["any"], headers={"X-Request-Id": "bad id with spaces"})
    assert generated.headers["X-Request-Id"] != "bad id with spaces" and len(generated.headers["X-Request-Id"]) == 32
