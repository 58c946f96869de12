"""`make run`'s supervisor brings up the whole service, prints working demo tokens, and stops
every process on SIGTERM. It runs on its own embedded servers in a temporary folder."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import psycopg2
import requests
from sqlalchemy.engine import make_url

from devstack.servers import free_port
from devstack.stack import ROOT, drop_database
from tests.support.helpers import SEED_QUOTE_ITEMS


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_run_serves_api_and_flower_then_stops_everything(tmp_path: Path):
    port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "JWT_SECRET", "BILLING_QUEUE")}
    env.update(PORT=str(port), FLOWER_PORT=str(flower_port), LAD_DATA_DIR=str(tmp_path / "data"))
    process = subprocess.Popen([sys.executable, "-m", "devstack.run"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = []
    try:
        deadline = time.monotonic() + 60  # "within a minute"
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(output)
        assert "Ctrl-C stops everything" in text, text[-3000:]
        token = re.search(r"^export TOKEN=(\S+)$", text, re.M).group(1)
        flower_auth = re.search(r"basic auth (\S+):(\S+)\)", text)

        quote = requests.post(f"http://127.0.0.1:{port}/api/billing/quote", json={"items": SEED_QUOTE_ITEMS},
                              headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert quote.json()["quote"]["totalCost"] == "0.037"
        assert requests.get(f"http://127.0.0.1:{flower_port}/", timeout=10).status_code == 401
        flower = requests.get(f"http://127.0.0.1:{flower_port}/", auth=(flower_auth[1], flower_auth[2]), timeout=10)
        assert flower.status_code == 200
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert process.returncode == 0
    assert not port_open(port) and not port_open(flower_port)
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftovers == []


# --- supervision, credentials, the database DATABASE_URL names ---------------------------------------------

class MakeRun:
    """`python -m devstack.run` (what `make run` runs) on free ports and a data folder of its own."""

    def __init__(self, tmp_path: Path, **env: str):
        self.port, self.flower_port = free_port(), free_port()
        self.data = tmp_path / "data"
        base = {k: v for k, v in os.environ.items()
                if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "JWT_SECRET", "BILLING_QUEUE",
                             "FLOWER_BASIC_AUTH")}
        base.update(PORT=str(self.port), FLOWER_PORT=str(self.flower_port), LAD_DATA_DIR=str(self.data), **env)
        self.process = subprocess.Popen([sys.executable, "-m", "devstack.run"], cwd=ROOT, env=base,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.output: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._lock:
                self.output.append(line)

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self.output)

    def wait_for(self, marker: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.text:
            assert self.process.poll() is None or marker in self.text, self.text[-3000:]
            assert time.monotonic() < deadline, f"no {marker!r} in:\n{self.text[-3000:]}"
            time.sleep(0.2)
        return self.text

    def stop(self) -> int:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise


def supervised(process: psutil.Process) -> psutil.Process:
    """The child of supervisord that `process` belongs to (itself or an ancestor)."""
    while process.parent() is not None and "supervisord" not in " ".join(process.parent().cmdline()):
        process = process.parent()
    return process


def child_pid(port: int) -> int:
    """The pid of the supervised process listening on `port` (gunicorn's master, not one of its workers)."""
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return supervised(psutil.Process(connection.pid)).pid
    raise AssertionError(f"nothing listens on {port}")


def worker_pid(data: Path) -> int:
    """The Celery worker's main process among `make run`'s children."""
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "worker" in cmdline and "tasks.app" in cmdline and any("lad_billing" in a for a in cmdline) \
                and process.parent() is not None and "supervisord" in " ".join(process.parent().cmdline()):
            if str(data) in " ".join(process.parent().cmdline()):
                return process.pid
    raise AssertionError("no worker found")


def wait_for_new_pid(find: Callable[[], int], old: int, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = find()
            if pid != old:
                return pid
        except (AssertionError, psutil.Error):
            pass
        time.sleep(0.3)
    raise AssertionError("the process was not restarted")


def test_run_restarts_a_killed_worker_and_web_and_keeps_configured_secrets_to_itself(tmp_path: Path):
    configured_secret = "configured-jwt-secret-" + uuid.uuid4().hex
    configured_flower = "ops:configured-" + uuid.uuid4().hex
    run = MakeRun(tmp_path, JWT_SECRET=configured_secret, FLOWER_BASIC_AUTH=configured_flower)
    try:
        text = run.wait_for("Ctrl-C stops everything")
        # issue 15: credentials it did not generate are never printed
        assert configured_secret not in text and configured_flower.split(":")[1] not in text
        # issue 15: Flower listens on loopback only
        flower = [c for c in psutil.net_connections(kind="tcp")
                  if c.status == psutil.CONN_LISTEN and c.laddr.port == run.flower_port]
        assert flower and {c.laddr.ip for c in flower} == {"127.0.0.1"}, flower
        user, password = configured_flower.split(":")
        assert requests.get(f"http://127.0.0.1:{run.flower_port}/", auth=(user, password), timeout=10).status_code == 200

        from web.auth import TokenSettings, issue_token

        token = issue_token(TokenSettings(configured_secret, None, None, None), tenant_id="demo-tenant",
                            capabilities=["billing.charge", "billing.view"], subject="t")
        base = f"http://127.0.0.1:{run.port}"

        def quote_ok() -> bool:
            try:
                return requests.post(f"{base}/api/billing/quote", json={"items": SEED_QUOTE_ITEMS}, timeout=5,
                                     headers={"Authorization": f"Bearer {token}"}).status_code == 200
            except requests.RequestException:
                return False

        old_worker = worker_pid(run.data)
        os.kill(old_worker, signal.SIGKILL)
        new_worker = wait_for_new_pid(lambda: worker_pid(run.data), old_worker)
        old_web = child_pid(run.port)
        os.killpg(old_web, signal.SIGKILL)  # gunicorn's master and its workers
        wait_for_new_pid(lambda: child_pid(run.port), old_web)
        deadline = time.monotonic() + 90
        while not quote_ok():
            assert time.monotonic() < deadline, "the API did not come back"
            time.sleep(0.3)
        # a charge is settled by the restarted worker
        charge = requests.post(f"{base}/api/billing/charge", headers={"Authorization": f"Bearer {token}"}, timeout=60,
                               json={"featureKey": "f", "idempotencyKey": uuid.uuid4().hex,
                                     "items": [{"category": "stt", "provider": "openai", "model": "whisper-1",
                                                "unit": "second", "quantity": "0"}]})
        assert charge.status_code == 200, charge.text
        assert worker_pid(run.data) == new_worker
        metrics = requests.get(f"{base}/metrics", timeout=10).text
        restarts = {m.group(1): float(m.group(2)) for m in
                    re.finditer(r'^lad_process_restarts_total\{process="(\w+)"\} (\S+)$', metrics, re.M)}
        assert restarts.get("worker") == 1 and restarts.get("web") == 1, restarts
        # one line per restart, from the supervisor
        assert len(re.findall(r"exited: worker .*not expected", run.text)) == 1, run.text[-3000:]
        assert len(re.findall(r"exited: web .*not expected", run.text)) == 1, run.text[-3000:]
    finally:
        code = run.stop()
    assert code == 0, run.text[-3000:]
    assert not port_open(run.port) and not port_open(run.flower_port)
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftovers == []


def test_run_uses_the_database_database_url_names(tmp_path: Path, live):
    """DATABASE_URL=…/lad_bars_x: that database is created and used, not lad_billing; a role that may not
    create it gets a clear error naming it."""
    name = f"lad_bars_{uuid.uuid4().hex[:8]}"
    server = make_url(live.stack.server_url)
    url = server.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    run = MakeRun(tmp_path, DATABASE_URL=url, REDIS_URL=live.env["REDIS_URL"],
                  BILLING_QUEUE=f"billing-bars-{uuid.uuid4().hex[:6]}")
    try:
        run.wait_for("Ctrl-C stops everything")
        with psycopg2.connect(host=server.host, port=server.port, user=server.username, dbname=name) as connection:
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM prices")
                assert cursor.fetchone()[0] > 0  # migrated and loaded
        assert re.search(rf"^DATABASE_URL=\S+/{name}$", (run.data / "stack.env").read_text(), re.M)
    finally:
        assert run.stop() == 0, run.text[-3000:]
        drop_database(live.stack.server_url, name)
    with psycopg2.connect(host=server.host, port=server.port, user=server.username, dbname="postgres") as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_database WHERE datname = 'lad_billing'")
            assert cursor.fetchall() == []
            cursor.execute("DROP ROLE IF EXISTS lad_no_createdb; CREATE ROLE lad_no_createdb LOGIN NOCREATEDB")
    missing = f"lad_missing_{uuid.uuid4().hex[:8]}"
    refused = MakeRun(tmp_path / "refused", DATABASE_URL=server.set(
        drivername="postgresql", username="lad_no_createdb", database=missing).render_as_string(hide_password=False),
        REDIS_URL=live.env["REDIS_URL"])
    assert refused.process.wait(timeout=60) == 2
    time.sleep(0.5)
    assert f"database '{missing}' does not exist" in refused.text and "lad_no_createdb" in refused.text, refused.text
