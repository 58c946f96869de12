"""`make ha` (`python -m devstack.ha`) as the contract describes it: it prints "LAD Billing is up", serves
charges through the HA servers, writes .data/ha/stack.env with the multi-host DATABASE_URL, the Sentinel
URLs and the server processes, and SIGTERM stops everything (processes and network namespaces). Its own
data folder, ports, namespace prefix and subnet, so it runs beside a developer's `make ha`."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests

from devstack.servers import free_port
from devstack.stack import ROOT
from tests.support.helpers import stt_items

# network namespaces (each database host is one) need root; CI is root
pytestmark = [pytest.mark.faults,
              pytest.mark.skipif(os.geteuid() != 0, reason="the HA hosts are network namespaces: root only")]


def test_make_ha_is_up_writes_stack_env_and_stops_everything(tmp_path: Path):
    port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "JWT_SECRET", "BILLING_QUEUE")}
    env.update(PORT=str(port), FLOWER_PORT=str(flower_port), LAD_DATA_DIR=str(tmp_path / "data"),
               LAD_HA_PREFIX="ladhm", LAD_HA_SUBNET="76")
    process = subprocess.Popen([sys.executable, "-m", "devstack.ha"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(output)
        assert "LAD Billing is up" in text, text[-3000:]
        assert "ip link set ladhm1h down" in text  # how to cut a host off
        stack_env = dict(line.split("=", 1) for line in
                         (tmp_path / "data" / "ha" / "stack.env").read_text().splitlines())
        assert re.fullmatch(r"postgresql://postgres@10\.76\.0\.11:5432,10\.76\.0\.12:5432/lad_billing"
                            r"\?target_session_attrs=read-write", stack_env["DATABASE_URL"])
        assert stack_env["REDIS_URL"].startswith("sentinel://") and "master=" in stack_env["REDIS_URL"]
        assert stack_env["CELERY_BROKER_URL"] == stack_env["REDIS_URL"]
        servers = [int(stack_env[k]) for k in ("PG_NODE_1_PID", "PG_NODE_2_PID", "REDIS_MASTER_PID")]
        assert all(psutil.pid_exists(pid) for pid in servers)
        assert {stack_env["PG_NODE_1_PORT"], stack_env["PG_NODE_2_PORT"]} == {"5432"}

        token = re.search(r"^export TOKEN=(\S+)$", text, re.M).group(1)
        admin = re.search(r"^export ADMIN_TOKEN=(\S+)$", text, re.M).group(1)
        base = f"http://127.0.0.1:{port}/api/billing"
        topup = requests.post(f"{base}/topup", json={"amount": "10", "idempotencyKey": str(uuid.uuid4())},
                              headers={"Authorization": f"Bearer {admin}"}, timeout=30)
        assert topup.status_code == 200, topup.text
        charge = requests.post(f"{base}/charge", json={"featureKey": "f", "items": stt_items("100")},
                               headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert charge.status_code == 200 and charge.json()["usageEvent"]["status"] == "charged", charge.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    assert not any(psutil.pid_exists(pid) for pid in servers), "a server outlived make ha"
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "ladhm" not in namespaces
