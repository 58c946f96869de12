"""`make bench`: start a stack (embedded servers unless URLs are given), run each scenario, print a
table and write bench/results.json. Every figure comes from this one run on this machine, so the
ratios (group commit vs naive) are like for like.

Load generation: single-request scenarios use wrk (compiled, epoll; installed from Debian's packages
when missing and we are root), with a Python client as the fallback. Batch scenarios pre-encode every
body before the clock starts, so the client spends its CPU on sockets only. Client and service share
the machine's cores; the table says so.
"""
from __future__ import annotations

import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import func, select, text

from bench import agencies as agency_bench
from bench import invoices as invoice_bench
from bench import limits as machine_limits
from bench import pricing as pricing_bench
from bench.profile import Profiler
from billing_core.db import dispose_engines, engine_for
from billing_core.usage.tables import usage_events
from devstack.servers import free_port
from devstack.stack import ROOT, Stack, drop_database
from web.auth import TokenSettings, issue_token

SECRET = "bench-" + uuid.uuid4().hex
HOT = int(os.environ.get("BENCH_HOT_CHARGES", "20000"))
NAIVE = int(os.environ.get("BENCH_NAIVE_CHARGES", "2000"))
SPREAD = int(os.environ.get("BENCH_SPREAD_CHARGES", "50000"))
TENANTS = int(os.environ.get("BENCH_SPREAD_TENANTS", "1000"))
WRK_SECONDS = int(os.environ.get("BENCH_WRK_SECONDS", "10"))
WORKER_CONCURRENCY = int(os.environ.get("BENCH_WORKER_CONCURRENCY", "4"))  # Celery pool processes, as `make run`
# web processes and threads per process, as the Dockerfile's (gunicorn --workers, WEB_THREADS)
WEB_WORKERS = int(os.environ.get("BENCH_WEB_WORKERS", "2"))
WEB_THREADS = int(os.environ.get("BENCH_WEB_THREADS", "32"))
# the history a tenant already has before its hot-wallet run (issue 23); 0 skips the scenario
HISTORY = int(os.environ.get("BENCH_HISTORY_EVENTS", "10000000"))
CALL_CLIENTS, CALL_LIMIT = 16, 16  # call admission: connections, and the tenant's maxConcurrentCalls
QUOTE_RATE, QUOTE_SECONDS = 200, 10
ITEM = {"category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second", "quantity": "100"}
LOGS = ROOT / ".data" / "bench" / "logs"
# BENCH_PROFILE=1: py-spy samples the web and worker processes during these scenarios (bench/profile.py)
PROFILE = os.environ.get("BENCH_PROFILE", "") not in ("", "0")
PROFILED = ("hot_wallet", "spread", "single_charge", "wallet_read", "call_admission", "hot_wallet_history")

WRK_SCRIPT = """
local counter = 0
local prefix = ""
function setup(thread) thread:set("prefix", "%(run)s-" .. tostring(math.random(1, 1e9))) end
function init(args) prefix = args[1] or prefix end
request = function()
  counter = counter + 1
  local body = '{"featureKey":"wrk","idempotencyKey":"' .. prefix .. '-' .. counter ..
    '","items":[{"category":"stt","provider":"openai","model":"whisper-1","unit":"second","quantity":"100"}]}'
  return wrk.format("POST", "/api/billing/charge%(query)s", nil, body)
end
"""


def token(tenant: str, *caps: str) -> str:
    return issue_token(TokenSettings(SECRET, None, None, None), tenant_id=tenant, capabilities=list(caps))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else 0.0


class Http:
    """A keep-alive HTTP/1.1 client on one connection (one per thread)."""

    def __init__(self, port: int, bearer: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}

    def post(self, path: str, body: bytes, **headers: str) -> tuple[int, bytes]:
        self.connection.request("POST", path, body=body, headers={**self.headers, **headers})
        response = self.connection.getresponse()
        return response.status, response.read()

    def patch(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.connection.request("PATCH", path, body=body, headers=self.headers)
        response = self.connection.getresponse()
        return response.status, response.read()

    def get(self, path: str) -> tuple[int, bytes]:
        self.connection.request("GET", path, headers=self.headers)
        response = self.connection.getresponse()
        return response.status, response.read()


class RssSampler(threading.Thread):
    """Resident memory of the web and worker process trees, sampled twice a second."""

    def __init__(self, stack: Stack):
        super().__init__(daemon=True)
        self.stack, self.samples = stack, {"web": [], "worker": []}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            for name, mb in self.now().items():
                if mb is not None:
                    self.samples[name].append(mb)

    def now(self) -> dict[str, float | None]:
        """The largest single process of each tree now, in MB: each one must stay small, and they are separate."""
        found: dict[str, float | None] = {}
        for name in ("web", "worker"):
            process = self.stack.processes.get(name)
            found[name] = None
            if process is None or process.poll() is not None:
                continue
            try:
                root = psutil.Process(process.pid)
                found[name] = max(m.memory_info().rss for m in [root, *root.children(recursive=True)]) / 2**20
            except psutil.Error:
                pass
        return found


class HotWalletLoad:
    """The hot wallet running in the background: `threads` clients POST batches of 1,000 charges of one
    tenant (fresh idempotency keys, encoded as they go) as fast as they are accepted, until stopped."""

    def __init__(self, bench: Bench, tenant: str, threads: int = 2):
        self.bench, self.tenant, self.threads = bench, tenant, threads
        self.stop, self.sent = threading.Event(), 0
        self.workers = [threading.Thread(target=self._send, args=(n,), daemon=True) for n in range(threads)]

    def _send(self, n: int) -> None:
        client, i = Http(self.bench.port, token(self.tenant, "billing.charge")), 0
        while not self.stop.is_set():
            i += 1
            body = self.bench.batch_bodies(self.tenant, 1000, 1000, f"{self.tenant}-{self.bench.run}-{n}-{i}")[0]
            status, answer = client.post("/api/billing/charges", body)
            assert status == 202, answer[:300]
            self.sent += 1000

    def __enter__(self) -> HotWalletLoad:
        self.bench.fund([self.tenant])
        for worker in self.workers:
            worker.start()
        time.sleep(1)  # a backlog is building before the clock starts
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join()


class Bench:
    def __init__(self) -> None:
        run = uuid.uuid4().hex[:8]
        self.run = run
        self.stack = Stack(ROOT / ".data" / "bench", database_name=f"lad_billing_bench_{run}", persistent=False)
        # rate limits far above what one machine can send: the bench measures capacity, and still pays
        # for counting each request in Redis and for the depleted-tenant check
        self.stack.env.update(JWT_SECRET=SECRET, BILLING_QUEUE=f"billing-bench-{run}",
                              PENDING_CHARGE_AGE_SECONDS="300", RATE_LIMIT_CHARGE="100000000/minute",
                              RATE_LIMIT_VIEW="100000000/minute", RATE_LIMIT_ADMIN="100000000/minute",
                              # the operators' token of the spread scenario names tenants it has no wallet
                              # for, and web.limits judges "depleted" by the token's own tenant
                              RATE_LIMIT_DEPLETED="100000000/minute")
        self.port = free_port()
        self.results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                    "python": platform.python_version(),
                                                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}}

    # --- stack ---------------------------------------------------------------------------------
    def start(self, mode: str) -> None:
        naive = mode == "naive"  # bench/naive.py: one message and one transaction per charge
        LOGS.mkdir(parents=True, exist_ok=True)
        self.stack.start_worker(log=LOGS / f"worker-{mode}.log", concurrency=WORKER_CONCURRENCY,
                                include="bench.naive" if naive else None)
        self.results["web"] = {"workers": WEB_WORKERS, "threads": WEB_THREADS}
        self.stack.start_web(self.port, log=LOGS / f"web-{mode}.log", workers=WEB_WORKERS, threads=WEB_THREADS,
                             app_factory="bench.naive:create_app" if naive else None)
        self.stack.wait_ready(self.port)

    def stop_service(self) -> None:
        for name in ("web", "worker"):
            self.stack.stop_process(name)

    @property
    def engine(self):
        return engine_for(self.stack.env["DATABASE_URL"])

    def fund(self, tenants: list[str], amount: str = "1000000000") -> None:
        admin = token("bench-ops", "billing.admin")

        def topup(chunk: list[str]) -> None:
            client = Http(self.port, admin)
            for tenant in chunk:
                body = json.dumps({"amount": amount, "idempotencyKey": f"fund-{tenant}", "tenantId": tenant}).encode()
                status, answer = client.post("/api/billing/topup", body)
                assert status == 200, answer

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(topup, [tenants[i::8] for i in range(8)]))

    # --- measurements from the events themselves -----------------------------------------------
    def wait_settled(self, tenants: list[str], count: int | None = None, timeout: float = 900,
                     since: Any = None) -> dict[str, float]:
        """Seconds from the first accept to the last commit, and accept-to-commit percentiles (of the events
        accepted from `since` on, when given: a tenant with a history)."""
        deadline = time.monotonic() + timeout
        where = usage_events.c.tenant_id.in_(tenants)
        if since is not None:
            where = where & (usage_events.c.created_at >= since)
        with self.engine.connect() as connection:
            while time.monotonic() < deadline:
                pending = connection.execute(select(func.count()).select_from(usage_events)
                                             .where(where, usage_events.c.status == "pending")).scalar_one()
                connection.commit()
                if pending == 0:
                    break
                time.sleep(0.25)
            first, last, settled, p50, p99 = connection.execute(
                select(func.min(usage_events.c.created_at), func.max(usage_events.c.charged_at), func.count(),
                       *[func.percentile_cont(q).within_group(
                           func.extract("epoch", usage_events.c.charged_at - usage_events.c.created_at))
                         for q in (0.5, 0.99)])
                .where(where)).one()
        assert count is None or settled == count, f"{settled} of {count} events"
        return {"seconds": (last - first).total_seconds(), "commit_p50_ms": float(p50) * 1000,
                "commit_p99_ms": float(p99) * 1000}

    def post_batches(self, bodies: list[bytes], bearer: str, threads: int) -> float:
        """POST every pre-encoded batch from `threads` clients; returns the elapsed seconds."""
        def send(chunk: list[bytes]) -> None:
            client = Http(self.port, bearer)
            for body in chunk:
                status, answer = client.post("/api/billing/charges", body)
                assert status == 202, answer[:300]

        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(send, [bodies[i::threads] for i in range(threads)]))
        return time.perf_counter() - started

    @staticmethod
    def batch_bodies(tenant: str, count: int, size: int, tag: str, with_tenant: bool = False) -> list[bytes]:
        bodies = []
        for start in range(0, count, size):
            events = [{"featureKey": "bench", "idempotencyKey": f"{tag}-{i}", "items": [ITEM]}
                      for i in range(start, min(start + size, count))]
            batch: dict[str, Any] = {"events": events}
            if with_tenant:
                batch["tenantId"] = tenant
            bodies.append(json.dumps(batch).encode())
        return bodies

    # --- scenarios -------------------------------------------------------------------------------
    def hot_wallet(self, mode: str, count: int, tenant: str | None = None) -> dict[str, float]:
        tenant = tenant or f"hot-{mode}"
        self.fund([tenant])
        bodies = self.batch_bodies(tenant, count, 1000, f"{tenant}-{mode}")
        since = invoice_bench.database_now(self.engine)
        ingest = self.post_batches(bodies, token(tenant, "billing.charge"), threads=2)
        settled = self.wait_settled([tenant], count, since=since)
        return {"charges": count, "ingest_seconds": ingest, **settled, "per_s": count / settled["seconds"]}

    def call_cycles(self, tenant: str, phase: str, seconds: int) -> dict[str, float]:
        """CALL_CLIENTS clients, each in a loop: admit a call (a hold under the tenant's concurrency
        limit), then settle it (a charge naming the hold, waiting for its outcome); the latency of the
        pair, as a voice platform sees it at a call's start and end."""
        bearer = token(tenant, "billing.charge")
        latencies: list[float] = []
        errors: list[str] = []
        deadline = time.monotonic() + seconds

        def client(n: int) -> None:
            http_client, i = Http(self.port, bearer), 0
            while time.monotonic() < deadline:
                i += 1
                key = f"{self.run}-{phase}-{n}-{i}"
                started = time.perf_counter()
                status, answer = http_client.post("/api/billing/reservations", json.dumps(
                    {"featureKey": "call", "amount": "1", "ttlSeconds": 600, "idempotencyKey": f"{key}-hold",
                     "externalReferenceId": key}).encode())
                if status != 200:
                    errors.append(f"hold {status}: {answer[:200]!r}")
                    continue
                hold = json.loads(answer)["reservation"]["id"]
                status, answer = http_client.post("/api/billing/charge", json.dumps(
                    {"featureKey": "call", "reservationId": hold, "idempotencyKey": f"{key}-settle",
                     "externalReferenceId": key, "items": [ITEM]}).encode())
                # a settlement still pending when the charge's wait ran out (202) counts with its latency
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors.append(f"settle {status}: {answer[:200]!r}")

        figures = _sixteen_clients(client, latencies, CALL_CLIENTS)
        figures["errors"] = len(errors)
        if errors:
            print(f"call admission ({phase}): {len(errors)} errors, first: {errors[0]}", flush=True)
        return figures

    def spread(self) -> dict[str, float]:
        tenants = [f"spread-{n}" for n in range(TENANTS)]
        self.fund(tenants)
        per_tenant = SPREAD // TENANTS
        bodies = [body for t in tenants for body in self.batch_bodies(t, per_tenant, per_tenant, t, with_tenant=True)]
        ingest = self.post_batches(bodies, token("bench-ops", "billing.admin"), threads=4)
        settled = self.wait_settled(tenants, per_tenant * TENANTS)
        return {"charges": per_tenant * TENANTS, "tenants": TENANTS, "ingest_seconds": ingest, **settled,
                "per_s": per_tenant * TENANTS / settled["seconds"]}

    def wrk_charges(self, tenant: str, wait: bool) -> dict[str, float]:
        script = LOGS / f"charge-{tenant}.lua"
        script.write_text(WRK_SCRIPT % {"run": self.run + tenant, "query": "" if wait else "?wait=0"})
        command = ["wrk", "-t2", "-c16", f"-d{WRK_SECONDS}s", "--latency", "-s", str(script),
                   "-H", f"Authorization: Bearer {token(tenant, 'billing.charge')}",
                   "-H", "Content-Type: application/json", f"http://127.0.0.1:{self.port}"]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        (LOGS / f"wrk-{tenant}.txt").write_text(output)
        return parse_wrk(output)

    def wrk_get(self, name: str, path: str, bearer: str = "") -> dict[str, float]:
        """One GET under wrk with the threads and connections of the single-charge scenario."""
        command = ["wrk", "-t2", "-c16", f"-d{WRK_SECONDS}s", "--latency",
                   *(["-H", f"Authorization: Bearer {bearer}"] if bearer else []), f"http://127.0.0.1:{self.port}{path}"]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        (LOGS / f"wrk-{name}.txt").write_text(output)
        return parse_wrk(output)

    def python_get(self, name: str, path: str, bearer: str = "") -> dict[str, float]:
        latencies: list[float] = []
        deadline = time.monotonic() + WRK_SECONDS

        def client(_: int) -> None:
            http_client = Http(self.port, bearer)
            while time.monotonic() < deadline:
                started = time.perf_counter()
                http_client.get(path)
                latencies.append(time.perf_counter() - started)

        return _sixteen_clients(client, latencies)

    def python_charges(self, tenant: str, wait: bool) -> dict[str, float]:
        bearer = token(tenant, "billing.charge")
        latencies: list[float] = []
        deadline = time.monotonic() + WRK_SECONDS
        headers = {} if wait else {"Prefer": "respond-async"}

        def client(n: int) -> None:
            http_client, i = Http(self.port, bearer), 0
            while time.monotonic() < deadline:
                i += 1
                body = json.dumps({"featureKey": "py", "idempotencyKey": f"{tenant}-{n}-{i}", "items": [ITEM]})
                started = time.perf_counter()
                status, _ = http_client.post("/api/billing/charge", body.encode(), **headers)
                latencies.append(time.perf_counter() - started)

        return _sixteen_clients(client, latencies)

    def quotes(self, seconds: int, background: threading.Event | None = None) -> dict[str, float]:
        """Quotes at a steady QUOTE_RATE per second over HTTP: 4 paced clients."""
        bearer = token("bench-quote", "billing.view")
        body = json.dumps({"items": [ITEM] * 4}).encode()
        latencies: list[float] = []
        per_client = QUOTE_RATE / 4

        def client(n: int) -> None:
            http_client = Http(self.port, bearer)
            start = time.perf_counter() + n / QUOTE_RATE
            for i in range(int(per_client * seconds)):
                due = start + i / per_client
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                sent = time.perf_counter()
                status, answer = http_client.post("/api/billing/quote", body)
                assert status == 200, answer
                latencies.append(time.perf_counter() - sent)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(client, range(4)))
        return {"rate_per_s": QUOTE_RATE, "p50_ms": percentile(latencies, 50) * 1000,
                "p99_ms": percentile(latencies, 99) * 1000}

    def quotes_under_load(self, events_per_s: int) -> tuple[dict[str, float], dict[str, float]]:
        """Quotes while batches keep charging at `events_per_s` for the same duration."""
        tenant = "quote-load"
        self.fund([tenant])
        bodies = self.batch_bodies(tenant, events_per_s * QUOTE_SECONDS, 500, tenant)
        bearer = token(tenant, "billing.charge")
        stop = threading.Event()

        def charge_steadily() -> None:
            client, start = Http(self.port, bearer), time.perf_counter()
            for i, body in enumerate(bodies):
                pause = start + i * 500 / events_per_s - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                if stop.is_set():
                    return
                client.post("/api/billing/charges", body)

        loader = threading.Thread(target=charge_steadily, daemon=True)
        loader.start()
        quotes = self.quotes(QUOTE_SECONDS)
        stop.set()
        loader.join()
        settled = self.wait_settled([tenant])
        return quotes, {"events_per_s_offered": events_per_s, **settled}

    # --- the run ---------------------------------------------------------------------------------
    # Scenarios of the group-commit stack, in this order; each fills its part of self.results. A new
    # scenario is one more method and one more name here.
    SCENARIOS = ("hot_wallet", "hot_wallet_priced", "sql_hot_wallet_limit", "spread", "agency", "healthz_limit",
                 "single_charge", "wallet_read", "call_admission",
                 "quotes", "hot_wallet_history", "invoice_rollup")

    def scenario_hot_wallet(self) -> None:
        hot = self.hot_wallet("group", HOT)
        self.results["hot_wallet"] = {"group_commit_per_s": round(hot["per_s"], 1), "charges": HOT,
                                      "burst_commit_p99_ms": round(hot["commit_p99_ms"], 1)}
        self.results["ingest_batch"] = {"events_per_s": round(HOT / hot["ingest_seconds"], 1), "batch_size": 1000}

    def scenario_hot_wallet_priced(self) -> None:
        # the same hot wallet with graduated and packaged items, beside the flat run (bench/pricing.py)
        flat = self.results.get("hot_wallet", {}).get("group_commit_per_s")
        if flat:
            self.results["hot_wallet_priced"] = pricing_bench.scenario(self, token, HOT, flat)

    def scenario_sql_hot_wallet_limit(self) -> None:
        limit = machine_limits.sql_hot_wallet(self.engine, self.stack.env["DATABASE_URL"], HOT, LOGS)
        self.results.setdefault("limits", {})["sql_hot_wallet_per_s"] = limit.get("per_s")
        self.results["limits"]["sql_hot_wallet"] = limit

    def scenario_spread(self) -> None:
        spread = self.spread()
        self.results["spread"] = {"per_s": round(spread["per_s"], 1), "charges": spread["charges"], "tenants": TENANTS,
                                  "ingest_events_per_s": round(spread["charges"] / spread["ingest_seconds"], 1)}

    def scenario_agency(self) -> None:
        # 100 sub-accounts of one agency: each charge moves its own wallet and the agency's (bench/agencies.py)
        self.results["agency"] = agency_bench.scenario(self, token, self.results.get("spread", {}).get("per_s"))

    def _get(self, name: str, path: str, bearer: str = "") -> dict[str, float]:
        measure = self.wrk_get if self.results["load_generator"] == "wrk" else self.python_get
        return {k: round(v, 2) for k, v in measure(name, path, bearer).items()}

    def scenario_healthz_limit(self) -> None:
        healthz = self._get("healthz", "/healthz")
        self.results.setdefault("limits", {})["healthz_per_s"] = healthz["per_s"]
        self.results["limits"]["healthz"] = healthz

    def scenario_single_charge(self) -> None:
        r = self.results
        measure = self.wrk_charges if r["load_generator"] == "wrk" else self.python_charges
        self.fund(["single-async", "single-wait"])
        single = measure("single-async", wait=False)
        time.sleep(1)  # requests still in flight when wrk stopped
        commit = self.wait_settled(["single-async"])
        r["ingest_single"] = {k: round(v, 2) for k, v in single.items()}
        r["commit_latency"] = {"p50_ms": round(commit["commit_p50_ms"], 1),
                               "p99_ms": round(commit["commit_p99_ms"], 1),
                               "at_per_s": round(single["per_s"], 1)}
        waited = measure("single-wait", wait=True)
        r["charge_wait"] = {k: round(v, 2) for k, v in waited.items()}

    def scenario_wallet_read(self) -> None:
        # a wallet with grants behind it: the funded tenant of the single-charge scenario
        self.fund(["wallet-read"])
        self.results["wallet_read"] = self._get("wallet", "/api/billing/wallet", token("wallet-read"))

    def scenario_call_admission(self) -> None:
        """Issue 23: a hold under a concurrency limit and its settlement, CALL_CLIENTS connections, alone and
        then while the hot wallet runs (another tenant's batches, as fast as they are accepted)."""
        tenant = f"calls-{self.run}"
        self.fund([tenant])
        status, answer = Http(self.port, token("bench-ops", "billing.admin")).patch("/api/billing/wallet", json.dumps(
            {"tenantId": tenant, "maxConcurrentCalls": CALL_LIMIT}).encode())
        assert status == 200, answer[:300]
        alone = self.call_cycles(tenant, "alone", WRK_SECONDS)
        since = invoice_bench.database_now(self.engine)
        with HotWalletLoad(self, f"calls-hot-{self.run}") as load:
            loaded = self.call_cycles(tenant, "loaded", WRK_SECONDS)
        hot = self.wait_settled([load.tenant], since=since)
        self.results["call_admission"] = {
            "p99_ms": round(loaded["p99_ms"], 2), "unloaded_p99_ms": round(alone["p99_ms"], 2),
            "p50_ms": round(loaded["p50_ms"], 2), "unloaded_p50_ms": round(alone["p50_ms"], 2),
            "per_s": round(loaded["per_s"], 1), "unloaded_per_s": round(alone["per_s"], 1),
            "errors": loaded["errors"] + alone["errors"], "connections": CALL_CLIENTS,
            "max_concurrent_calls": CALL_LIMIT, "hot_wallet_charges": load.sent,
            "hot_wallet_per_s": round(load.sent / hot["seconds"], 1) if hot["seconds"] > 0 else None}

    def scenario_hot_wallet_history(self) -> None:
        """Issue 23: the hot wallet of a tenant that already has HISTORY charged events, against fresh
        tenants' run just before and just after it. The history is generated set-based like the invoice month (one tenant, in
        the month before the rollup's two, so they never read it), with statistics as after a burst:
        ANALYZE runs before the load and not after it, and autovacuum is off on the loaded tables until the
        scenario ends, so the planner believes this tenant has no rows. Its settling must find its rows
        by key all the same."""
        if not HISTORY:
            return
        engine = self.engine
        needed = HISTORY * invoice_bench.GB_PER_MILLION_EVENTS // 1_000_000 + invoice_bench.DISK_RESERVE_GB
        free = invoice_bench.free_disk_gb()
        if free < needed:
            self.results["hot_wallet_history"] = {"skipped": f"{free} GB free on /work, about {needed} GB needed"}
            return
        tables = (*invoice_bench.LOADED_TABLES, "wallets")
        invoice_bench.wait_until_nothing_pending(engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            for table in tables:
                connection.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = off)"))
                connection.execute(text(f"ANALYZE {table}"))
        try:
            period = invoice_bench.invoices.Period.containing(invoice_bench.database_now(engine))
            for _ in range(3):
                period = period.previous()
            tag = f"hist{uuid.uuid4().hex[:6]}"
            print(f"hot wallet history: generating {HISTORY:,} events of one tenant in {period.label}", flush=True)
            generated = invoice_bench.generate(engine, events=HISTORY, tenants=1, period_start=period.start,
                                               period_end=period.end, tag=tag, analyze=False)
            # fresh, history, fresh again: the history run against the mean of the two around it, so
            # neither the order nor a drift of the machine's load favours one side
            fresh = self.hot_wallet("fresh", HOT, tenant=f"fresh-{tag}")
            history = self.hot_wallet("history", HOT, tenant=f"inv-{tag}-1")
            fresh_after = self.hot_wallet("fresh", HOT, tenant=f"fresh-after-{tag}")
        finally:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                for table in tables:
                    connection.execute(text(f"ALTER TABLE {table} RESET (autovacuum_enabled)"))
        fresh_per_s = (fresh["per_s"] + fresh_after["per_s"]) / 2
        self.results["hot_wallet_history"] = {
            "per_s": round(history["per_s"], 1), "fresh_per_s": round(fresh_per_s, 1),
            "fresh_runs_per_s": [round(fresh["per_s"], 1), round(fresh_after["per_s"], 1)],
            "history_events": generated["events"], "charges": HOT, "statistics": "stale (analyzed before the load)",
            "ratio": round(history["per_s"] / fresh_per_s, 3), "generate_seconds": generated["load_seconds"]}

    def scenario_quotes(self) -> None:
        r = self.results
        r["quote"] = {k: round(v, 2) for k, v in self.quotes(QUOTE_SECONDS).items()}
        under_load, load = self.quotes_under_load(5000)
        r["quote_under_load"] = {**{k: round(v, 2) for k, v in under_load.items()},
                                 "charging_events_per_s": 5000,
                                 "charging_commit_p99_ms": round(load["commit_p99_ms"], 1)}

    def scenario_invoice_rollup(self) -> None:
        self.results["invoice_rollup"] = invoice_bench.scenario(self, token)

    def execute(self) -> None:
        r = self.results
        load_tool = "wrk" if ensure_wrk() else "python"
        r["load_generator"] = load_tool
        self.stack.start_servers()
        self.stack.migrate()
        self.start("group")
        sampler = RssSampler(self.stack)
        sampler.start()
        only = {name for name in os.environ.get("BENCH_ONLY", "").split(",") if name}
        try:
            for name in self.SCENARIOS:
                if not only or name in only:
                    print(f"scenario {name}", flush=True)
                    if PROFILE and name in PROFILED:
                        with Profiler(self.stack, name, LOGS):
                            getattr(self, f"scenario_{name}")()
                    else:
                        getattr(self, f"scenario_{name}")()
            # the group-commit stack's processes after every scenario (the naive stack below is new ones)
            r["rss_after_mb"] = {name: None if mb is None else round(mb, 1) for name, mb in sampler.now().items()}
            self.stop_service()
            if not only or "naive" in only:
                self.start("naive")
                naive = self.hot_wallet("naive", NAIVE)
                r.setdefault("hot_wallet", {})["naive_per_s"] = round(naive["per_s"], 1)
                r["hot_wallet"]["naive_charges"] = NAIVE
                if "group_commit_per_s" in r["hot_wallet"]:
                    r["hot_wallet"]["ratio"] = round(r["hot_wallet"]["group_commit_per_s"] / naive["per_s"], 1)
        finally:
            sampler.stopped.set()
            r["rss_mb"] = {name: round(max(s), 1) if s else None for name, s in sampler.samples.items()}
            r["rss_mb"]["web_first_last"] = [round(sampler.samples["web"][0], 1), round(sampler.samples["web"][-1], 1)] \
                if sampler.samples["web"] else None
            r["rss_mb"]["worker_first_last"] = [round(sampler.samples["worker"][0], 1),
                                                round(sampler.samples["worker"][-1], 1)] \
                if sampler.samples["worker"] else None
            self.stop_service()
            dispose_engines()
            if self.stack.server_url:
                drop_database(self.stack.server_url, self.stack.database_name)
            if self.stack.servers is not None:
                self.stack.servers.stop()


def ensure_wrk() -> bool:
    if shutil.which("wrk"):
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        # wait for another apt run rather than fail on its lock; a fresh machine has no package lists yet
        install = ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=600", "wrk"]
        if subprocess.run(install, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq", "-o", "DPkg::Lock::Timeout=600"], capture_output=True)
            subprocess.run(install, capture_output=True)
    return shutil.which("wrk") is not None


def _sixteen_clients(client: Callable[[int], None], latencies: list[float], clients: int = 16) -> dict[str, float]:
    """Run 16 Python clients (wrk's stand-in) until their deadline; the figures wrk would give."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    elapsed = time.perf_counter() - started
    return {"per_s": len(latencies) / elapsed, "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "requests": len(latencies), "non_2xx": 0}


def parse_wrk(output: str) -> dict[str, float]:
    def millis(value: str) -> float:
        for suffix, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if value.endswith(suffix):
                return float(value[: -len(suffix)]) * factor
        return float(value)

    figures: dict[str, float] = {"non_2xx": 0}
    for line in output.splitlines():
        words = line.split()
        if words[:1] == ["50%"]:
            figures["p50_ms"] = millis(words[1])
        elif words[:1] == ["99%"]:
            figures["p99_ms"] = millis(words[1])
        elif line.startswith("Requests/sec:"):
            figures["per_s"] = float(words[1])
        elif "requests in" in line:
            figures["requests"] = float(words[0])
        elif line.strip().startswith("Non-2xx"):
            figures["non_2xx"] = float(words[-1])
    return figures


def _ratio(value: Any, limit: Any) -> float | None:
    return round(value / limit, 3) if isinstance(value, (int, float)) and isinstance(limit, (int, float)) and limit \
        else None


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 23's targets (the second round), each as LAD's figure against a limit measured in this run:
    name, figure, limit, ratio, target, pass (None: not measured in this run)."""
    limits, hot = r.get("limits", {}), r.get("hot_wallet", {})
    single, wallet = r.get("ingest_single", {}), r.get("wallet_read", {})
    healthz, sql = limits.get("healthz_per_s"), limits.get("sql_hot_wallet_per_s")
    found: list[dict[str, Any]] = []

    def target(name: str, figure: Any, limit: Any, ratio: float | None, goal: str, passed: bool | None,
               **more: Any) -> None:
        found.append({"name": name, "figure": figure, "limit": limit, "ratio": ratio, "target": goal,
                      "pass": passed, **more})

    def at_least(ratio: float | None, bound: float) -> bool | None:
        return None if ratio is None else ratio >= bound

    def at_most(ratio: float | None, bound: float) -> bool | None:
        return None if ratio is None else ratio <= bound

    ratio = _ratio(hot.get("group_commit_per_s"), sql)
    target("hot wallet / sql_hot_wallet", hot.get("group_commit_per_s"), sql, ratio, ">= 0.35", at_least(ratio, 0.35))
    history = r.get("hot_wallet_history", {})
    ratio = _ratio(history.get("per_s"), history.get("fresh_per_s"))
    target(f"hot wallet with {history.get('history_events', HISTORY):,}-event history / fresh tenant",
           history.get("per_s"), history.get("fresh_per_s"), ratio, ">= 0.9", at_least(ratio, 0.9))
    ratio = _ratio(single.get("per_s"), healthz)
    target("POST /charge async / healthz, 16 conns", single.get("per_s"), healthz, ratio, ">= 0.2",
           at_least(ratio, 0.2))
    p99 = single.get("p99_ms")
    target("POST /charge async p99 (ms), 16 conns", p99, None, p99, "<= 50", at_most(p99, 50))
    ratio = _ratio(wallet.get("per_s"), healthz)
    target("GET /wallet / healthz", wallet.get("per_s"), healthz, ratio, ">= 0.35", at_least(ratio, 0.35))
    calls = r.get("call_admission", {})
    ratio = _ratio(calls.get("p99_ms"), calls.get("unloaded_p99_ms"))
    target("hold + settle p99 while charging / unloaded", calls.get("p99_ms"), calls.get("unloaded_p99_ms"), ratio,
           "<= 3", at_most(ratio, 3))
    ratio = r.get("hot_wallet_priced", {}).get("ratio_to_flat")
    target("hot wallet graduated + packaged / flat", r.get("hot_wallet_priced", {}).get("group_commit_per_s"),
           hot.get("group_commit_per_s"), ratio, ">= 0.85", at_least(ratio, 0.85))
    ratio = _ratio(r.get("spread", {}).get("per_s"), hot.get("group_commit_per_s"))
    target("spread / hot wallet", r.get("spread", {}).get("per_s"), hot.get("group_commit_per_s"), ratio, ">= 0.7",
           at_least(ratio, 0.7))
    agency = r.get("agency", {})
    ratio = agency.get("ratio_to_spread")
    target("agency (100 sub-accounts) / spread", agency.get("per_s"), r.get("spread", {}).get("per_s"), ratio,
           ">= 0.5", at_least(ratio, 0.5))
    ratio = _ratio(r.get("quote_under_load", {}).get("p99_ms"), r.get("quote", {}).get("p99_ms"))
    target("quote p99 charging / unloaded", r.get("quote_under_load", {}).get("p99_ms"),
           r.get("quote", {}).get("p99_ms"), ratio, "<= 3", at_most(ratio, 3))
    rss, after = r.get("rss_mb", {}), r.get("rss_after_mb", {})
    for name in ("web", "worker"):
        last = after.get(name)
        target(f"largest {name} process RSS (MB) after the bench", last, None, last, "< 200",
               None if last is None else last < 200, max_mb=rss.get(name))
    for name, figures in r.get("invoice_rollup", {}).items():
        if not name.startswith("events_") or "seconds" not in figures:
            continue
        events = int(name.removeprefix("events_"))
        bound = 5 if events <= 1_000_000 else 30
        ratio = _ratio(figures["seconds"], figures.get("plain_group_by_seconds"))
        passed = figures["seconds"] < bound or (ratio is not None and ratio <= 3)
        target(f"invoice rollup {events:,} (s)", figures["seconds"], figures.get("plain_group_by_seconds"), ratio,
               f"< {bound} s or <= 3x plain GROUP BY", passed, seconds=figures["seconds"])
    return found


def _shown(value: Any) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, (int, float)) else str(value)


def table(r: dict[str, Any]) -> str:
    hot, limits = r.get("hot_wallet", {}), r.get("limits", {})
    healthz, sql = limits.get("healthz_per_s"), limits.get("sql_hot_wallet_per_s")
    rows: list[tuple[str, str]] = []

    def row(name: str, figure: str, limit: str = "", ratio: float | None = None) -> None:
        rows.append((name, figure + (f"   [{limit}: ratio {ratio}]" if limit and ratio is not None else "")))

    if sql is not None:
        row("LIMIT sql hot wallet (pgbench)", f"{sql:,.0f} charges/s in batches of {machine_limits.BATCH:,}")
    if healthz is not None:
        lh = limits["healthz"]
        row("LIMIT GET /healthz, 16 conns", f"{healthz:,.0f} req/s, p50 {lh.get('p50_ms')} / p99 {lh.get('p99_ms')} ms")
    if "group_commit_per_s" in hot:
        row("hot wallet, group commit", f"{hot['group_commit_per_s']:,.0f} charges/s ({hot['charges']:,})",
            "sql hot wallet", _ratio(hot["group_commit_per_s"], sql))
    if "naive_per_s" in hot:
        row("hot wallet, naive", f"{hot['naive_per_s']:,.0f} charges/s ({hot['naive_charges']:,})")
    if "ratio" in hot:
        row("  group commit / naive", f"{hot['ratio']}x")
    if "hot_wallet_priced" in r:
        priced = r["hot_wallet_priced"]
        row("hot wallet, graduated + packaged", f"{priced['group_commit_per_s']:,.0f} charges/s",
            "flat hot wallet (target >= 0.85)", priced.get("ratio_to_flat"))
    if "spread" in r:
        row("spread over tenants", f"{r['spread']['per_s']:,.0f} charges/s ({r['spread']['charges']:,} / "
                                   f"{r['spread']['tenants']:,})", "hot wallet",
            _ratio(r["spread"]["per_s"], hot.get("group_commit_per_s")))
    if r.get("agency", {}).get("per_s") is not None:
        agency = r["agency"]
        row("agency, 100 sub-accounts charging", f"{agency['per_s']:,.0f} charges/s ({agency['charges']:,} / "
                                                 f"{agency['sub_accounts']:,}, two wallets each)",
            "spread (target >= 0.5)", agency.get("ratio_to_spread"))
    if "ingest_batch" in r:
        row("POST /charges (1,000 per batch)", f"{r['ingest_batch']['events_per_s']:,.0f} events/s accepted",
            "sql hot wallet", _ratio(r["ingest_batch"]["events_per_s"], sql))
    if "ingest_single" in r:
        single, wait = r["ingest_single"], r["charge_wait"]
        row("POST /charge async, 16 conns", f"{single['per_s']:,.0f} req/s, p50 {single['p50_ms']} / p99 "
                                            f"{single['p99_ms']} ms", "healthz", _ratio(single["per_s"], healthz))
        row("  accept-to-commit", f"p50 {r['commit_latency']['p50_ms']} / p99 {r['commit_latency']['p99_ms']} ms")
        row("POST /charge, default wait", f"{wait['per_s']:,.0f} req/s, p50 {wait['p50_ms']} / p99 {wait['p99_ms']} ms",
            "healthz", _ratio(wait["per_s"], healthz))
    if "wallet_read" in r:
        wallet = r["wallet_read"]
        row("GET /wallet, 16 conns", f"{wallet['per_s']:,.0f} req/s, p50 {wallet['p50_ms']} / p99 {wallet['p99_ms']} ms",
            "healthz", _ratio(wallet["per_s"], healthz))
    if "quote" in r:
        row("POST /quote at 200/s", f"p50 {r['quote']['p50_ms']} / p99 {r['quote']['p99_ms']} ms")
        row("  while charging 5,000/s", f"p50 {r['quote_under_load']['p50_ms']} / p99 "
                                        f"{r['quote_under_load']['p99_ms']} ms", "unloaded p99",
            _ratio(r["quote_under_load"]["p99_ms"], r["quote"]["p99_ms"]))
    if "call_admission" in r:
        calls = r["call_admission"]
        row(f"hold + settle, {calls['connections']} conns, limit {calls['max_concurrent_calls']}",
            f"alone {calls['unloaded_per_s']:,} calls/s, p50 {calls['unloaded_p50_ms']} / p99 "
            f"{calls['unloaded_p99_ms']} ms")
        row("  while the hot wallet runs", f"{calls['per_s']:,} calls/s, p50 {calls['p50_ms']} / p99 {calls['p99_ms']} ms "
            f"(hot wallet {calls['hot_wallet_per_s']} charges/s, {calls['errors']} errors)", "unloaded p99",
            _ratio(calls["p99_ms"], calls["unloaded_p99_ms"]))
    if "hot_wallet_history" in r:
        history = r["hot_wallet_history"]
        if "skipped" in history:
            row("hot wallet with history", f"skipped: {history['skipped']}")
        else:
            row(f"hot wallet, {history['history_events']:,}-event history", f"{history['per_s']:,.0f} charges/s "
                f"(fresh tenant {history['fresh_per_s']:,.0f}/s, same run, stale statistics)", "fresh tenant",
                history["ratio"])
    web_last, worker_last = (r.get("rss_after_mb", {}).get(name) for name in ("web", "worker"))
    row("largest process RSS web / worker", f"after the bench {web_last} / {worker_last} MB, "
                                           f"largest during it {r['rss_mb']['web']} / {r['rss_mb']['worker']} MB")
    rollup = r.get("invoice_rollup", {})
    for name, figures in rollup.items():
        if not name.startswith("events_"):
            continue
        events = int(name.removeprefix("events_"))
        target = "< 5 s" if events <= 1_000_000 else "< 30 s"
        if "skipped" in figures:
            row(f"invoice rollup, {events:,} events", f"skipped: {figures['skipped']}")
            continue
        row(f"invoice rollup, {events:,} events / {rollup['tenants']:,} tenants",
            f"{figures['seconds']} s (target {target}), {figures['invoices']:,} invoices, "
            f"{figures['lines']:,} lines, reconciled: {'yes' if figures['reconciled'] else 'NO'}",
            "plain GROUP BY", _ratio(figures["seconds"], figures.get("plain_group_by_seconds")))
        if "plain_group_by_seconds" in figures:
            row("  LIMIT plain GROUP BY, same rows", f"{figures['plain_group_by_seconds']} s")
        row("  while charging", f"{figures['charged_during_rollup_per_s']:,} charges/s settled "
                                f"(offered {rollup['offered_charges_per_s']:,}/s over HTTP)")
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{name:<{width}}{figure}" for name, figure in rows]
    lines.append("\ntargets (issue 23, ratios of this run):")
    named = max((len(t["name"]) for t in r.get("targets", [])), default=0) + 2
    for t in r.get("targets", []):
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[t["pass"]]
        against = f" / limit {_shown(t['limit'])}" if t["limit"] is not None else ""
        lines.append(f"  {verdict:<5}{t['name']:<{named}}{_shown(t['figure'])}{against}: {t['ratio']}"
                     f"  (target {t['target']})")
    return "\n".join(lines)


def main() -> int:
    bench = Bench()
    bench.execute()
    bench.results["targets"] = targets(bench.results)
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(bench.results, indent=2) + "\n")
    m = bench.results["machine"]
    print(f"\nLAD Billing bench: {m['cpus']} CPUs, {m['memory_gb']} GB, {m['platform']}, Python {m['python']}")
    print(f"load generator: {bench.results['load_generator']}, on the same cores as the service\n")
    print(table(bench.results))
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
