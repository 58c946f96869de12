"""`make run`'s supervisor brings up the whole service, prints working demo tokens, and stops
every process on SIGTERM. It runs on its own embedded servers in a temporary folder."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from devstack.servers import free_port
from devstack.stack import ROOT
from tests.test_seed_api import SEED_QUOTE_ITEMS


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
