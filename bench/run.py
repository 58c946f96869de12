"""`make bench`: start a stack (embedded servers unless URLs are given), run the scenarios, print a
table and write bench/results.json. Figures are from one run on this machine; compare ratios."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
from sqlalchemy import func, select

from billing_core.db import engine_for
from billing_core.tables import usage_events
from devstack.servers import free_port
from devstack.stack import ROOT, Stack, drop_database
from web.auth import TokenSettings, issue_token

SECRET = "bench-" + uuid.uuid4().hex
ITEMS = [{"category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second", "quantity": "100"}]
CHARGES = int(os.environ.get("BENCH_CHARGES", "3000"))
CLIENTS = 16


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def tree_rss_mb(process: psutil.Process) -> float:
    members = [process, *process.children(recursive=True)]
    return sum(m.memory_info().rss for m in members if m.is_running()) / 2**20


class Client:
    def __init__(self, base: str, token: str):
        self.base, self.session = base, requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def post(self, path: str, body: dict, **headers: str) -> requests.Response:
        return self.session.post(self.base + path, json=body, headers=headers, timeout=60)


def charge_burst(base: str, tenant: str, count: int) -> tuple[list[float], float]:
    """`count` single-event async charges from CLIENTS threads; returns latencies and elapsed time."""
    token = issue_token(TokenSettings(SECRET, None, None, None), tenant_id=tenant, capabilities=["billing.charge"])
    clients = [Client(base, token) for _ in range(CLIENTS)]

    def send(i: int) -> float:
        started = time.perf_counter()
        response = clients[i % CLIENTS].post("/api/billing/charge", {
            "featureKey": "bench", "idempotencyKey": f"b-{i}", "items": ITEMS}, Prefer="respond-async")
        assert response.status_code == 202, response.text
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        latencies = list(pool.map(send, range(count)))
    return latencies, time.perf_counter() - started


def wait_charged(engine, tenant: str, count: int, timeout: float = 600) -> float:
    """Seconds from the first accept to the last commit, read from the events themselves."""
    deadline = time.monotonic() + timeout
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            pending = connection.execute(select(func.count()).select_from(usage_events).where(
                usage_events.c.tenant_id == tenant, usage_events.c.status == "pending")).scalar_one()
            connection.commit()
            if pending == 0:
                break
            time.sleep(0.2)
        first, last, done = connection.execute(
            select(func.min(usage_events.c.created_at), func.max(usage_events.c.charged_at), func.count())
            .where(usage_events.c.tenant_id == tenant)).one()
    assert done == count
    return (last - first).total_seconds()


def main() -> int:
    run_id = uuid.uuid4().hex[:8]
    stack = Stack(ROOT / ".data" / "bench", database_name=f"lad_billing_bench_{run_id}", persistent=False)
    stack.env.update(JWT_SECRET=SECRET, BILLING_QUEUE=f"billing-bench-{run_id}")
    port = free_port()
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version()}}
    try:
        stack.start_servers()
        stack.migrate()
        logs = stack.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stack.start_worker(log=logs / "worker.log", concurrency=4)
        stack.start_web(port, log=logs / "web.log", workers=2, threads=32)
        stack.wait_ready(port)
        base = f"http://127.0.0.1:{port}"
        engine = engine_for(stack.env["DATABASE_URL"])
        admin = issue_token(TokenSettings(SECRET, None, None, None), tenant_id="bench-hot", capabilities=["billing.admin"])
        Client(base, admin).post("/api/billing/topup", {"amount": "1000000", "idempotencyKey": "bench"})

        latencies, elapsed = charge_burst(base, "bench-hot", CHARGES)
        commit_span = wait_charged(engine, "bench-hot", CHARGES)
        results["ingest_single"] = {"per_s": round(CHARGES / elapsed, 1),
                                    "p50_ms": round(percentile(latencies, 50) * 1000, 2),
                                    "p99_ms": round(percentile(latencies, 99) * 1000, 2)}
        results["hot_wallet"] = {"naive_per_s": round(CHARGES / commit_span, 1), "charges": CHARGES}

        quote_client = Client(base, admin)
        quote_latencies = []
        for _ in range(500):
            started = time.perf_counter()
            assert quote_client.post("/api/billing/quote", {"items": ITEMS}).status_code == 200
            quote_latencies.append(time.perf_counter() - started)
            time.sleep(0.002)
        results["quote"] = {"p50_ms": round(percentile(quote_latencies, 50) * 1000, 2),
                            "p99_ms": round(percentile(quote_latencies, 99) * 1000, 2),
                            "mean_ms": round(statistics.mean(quote_latencies) * 1000, 2)}
        results["rss_mb"] = {name: round(tree_rss_mb(psutil.Process(stack.processes[name].pid)), 1)
                             for name in ("web", "worker")}
    finally:
        for name in list(stack.processes):
            stack.stop_process(name)
        from billing_core.db import dispose_engines

        dispose_engines()
        if stack.server_url:
            drop_database(stack.server_url, stack.database_name)
        if stack.servers is not None:
            stack.servers.stop()

    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nLAD Billing bench — {results['machine']['cpus']} CPUs, {results['machine']['platform']}")
    print("(load generator: Python threads in this process, sharing the same cores as the service)\n")
    print(f"{'scenario':<34}{'figure':>14}")
    rows = [
        ("hot wallet, one task per charge", f"{results['hot_wallet']['naive_per_s']}/s"),
        ("POST /charge async, 16 clients", f"{results['ingest_single']['per_s']}/s"),
        ("  latency p50 / p99", f"{results['ingest_single']['p50_ms']} / {results['ingest_single']['p99_ms']} ms"),
        ("POST /quote p50 / p99", f"{results['quote']['p50_ms']} / {results['quote']['p99_ms']} ms"),
        ("RSS web / worker, end of run", f"{results['rss_mb']['web']} / {results['rss_mb']['worker']} MB"),
    ]
    for name, figure in rows:
        print(f"{name:<34}{figure:>14}")
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
