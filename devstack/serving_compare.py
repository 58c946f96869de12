"""Throughput of the serving layer, old (gunicorn gthread) against new (gunicorn + uvicorn workers,
web/serving.py), on one stack in one run, with wrk:

    .venv/bin/python -m devstack.serving_compare [--seconds 10] [--connections 16]

GET /healthz, GET /wallet and POST /charge (Prefer: respond-async) for each. Needs `wrk` on PATH.
Not part of `make bench`; it documents the choice of serving layer (README "Security").
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from billing_core.db import dispose_engines
from devstack.servers import free_port
from devstack.stack import PYTHON_BIN, ROOT, Stack, drop_database, web_command_args

OLD = ["--worker-class", "gthread", "--threads", "32", "--keep-alive", "75", "--timeout", "60",
       "web.app:create_app()"]

CHARGE_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Prefer"] = "respond-async"
wrk.body = '{"featureKey":"bench","items":[{"category":"stt","provider":"openai","model":"whisper-1",' ..
  '"unit":"second","quantity":"1"}]}'
"""


def wrk(url: str, token: str, seconds: int, connections: int, script: Path | None = None) -> tuple[float, str]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {token}"]
    if script:
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+(\S+)", out)
    return rate, p99.group(1) if p99 else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    options = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    run_id = uuid.uuid4().hex[:8]
    stack = Stack(ROOT / ".data" / "serving-compare", database_name=f"lad_serving_{run_id}", persistent=False)
    stack.env.update(JWT_SECRET="serving-compare-" + uuid.uuid4().hex, BILLING_QUEUE=f"serving-{run_id}",
                     RATE_LIMIT_CHARGE="1000000/minute", RATE_LIMIT_VIEW="1000000/minute")
    script = Path(tempfile.mkdtemp()) / "charge.lua"
    script.write_text(CHARGE_LUA)
    try:
        stack.start_servers()
        stack.migrate()
        logs = stack.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stack.start_worker(concurrency=2, log=logs / "worker.log")
        from web.auth import TokenSettings, issue_token

        token = issue_token(TokenSettings(stack.env["JWT_SECRET"], None, None, None), tenant_id=f"bench-{run_id}",
                            capabilities=["billing.charge", "billing.view"])
        stack.env["WEB_THREADS"] = "32"
        for name, arguments in (("gthread (before)", OLD), ("uvicorn workers (after)", None)):
            port = free_port()
            args = arguments and ["--workers", "2", "--bind", f"0.0.0.0:{port}", *arguments]
            process = stack.spawn("web", str(PYTHON_BIN / "gunicorn"), *(args or web_command_args(2, port)),
                                  log=logs / "web.log")
            stack.wait_ready(port)
            base = f"http://127.0.0.1:{port}"
            for label, path, lua in (("GET /healthz", "/healthz", None), ("GET /wallet", "/api/billing/wallet", None),
                                     ("POST /charge async", "/api/billing/charge", script)):
                wrk(base + path, token, 2, options.connections, lua)  # warm up
                rate, p99 = wrk(base + path, token, options.seconds, options.connections, lua)
                print(f"{name:26} {label:20} {rate:9.1f} req/s  p99 {p99}")  # noqa: T201
            stack.stop_process("web")
            process.wait()
    finally:
        for name in list(stack.processes):
            stack.stop_process(name)
        dispose_engines()
        if stack.server_url:
            drop_database(stack.server_url, stack.database_name)
        if stack.servers is not None:
            stack.servers.stop()


if __name__ == "__main__":
    main()
