"""Both client libraries' models against /openapi.json: every field they read exists there with that type
(decimal strings where they read amounts, null only where they allow it), so the server and the clients
cannot drift apart silently."""
from __future__ import annotations

import copy
import json
import subprocess

import pytest
from lad_billing import models
from lad_billing._operations import API, READS

from tests.support.client_contract import Contract
from tests.support.node_client import built_node_package


@pytest.fixture(scope="module")
def contract(api) -> Contract:
    return Contract(api.get("/openapi.json").json())


def python_reads() -> list[dict]:
    return [{"method": r.method, "path": API + r.path, "status": r.status, "pointer": list(r.pointer),
             "spec": models.describe(r.model)} for r in READS]


@pytest.fixture(scope="module")
def node_reads() -> list[dict]:
    package = built_node_package()
    script = "process.stdout.write(JSON.stringify(require('./dist/cjs/index.js').reads))"
    output = subprocess.run(["node", "-e", script], cwd=package, capture_output=True, text=True, check=True, timeout=60)
    return json.loads(output.stdout)


def test_python_models_match_the_openapi_document(contract):
    problems = [p for read in python_reads() for p in contract.check_read(read)]
    assert problems == []


@pytest.mark.node
def test_node_models_match_the_openapi_document(contract, node_reads):
    problems = [p for read in node_reads for p in contract.check_read(read)]
    assert problems == []


@pytest.mark.node
def test_both_libraries_read_the_same_answers(node_reads):
    def key(read: dict) -> tuple:
        return read["method"], read["path"], read["status"], tuple(read["pointer"])

    assert sorted(map(key, python_reads())) == sorted(map(key, node_reads))
    # and the same fields of each, with the same types (how strict each is about null and absence is
    # checked against the document above)
    python = {key(r): r["spec"] for r in python_reads()}
    for read in node_reads:
        assert _shape(read["spec"]) == _shape(python[key(read)]), key(read)


def _shape(spec: dict) -> object:
    """A spec's fields and types, for comparing the two libraries."""
    shape = {k: v for k, v in spec.items() if k not in ("name", "fields", "items", "values", "optional", "nullable")}
    for part in ("items", "values"):
        if part in spec:
            shape[part] = _shape(spec[part])
    if "fields" in spec:
        shape["fields"] = {name: _shape(field) for name, field in spec["fields"].items()}
    return shape


def test_the_check_catches_drift(contract):
    wallet = next(r for r in python_reads() if r["path"].endswith("/wallet") and r["method"] == "GET")
    assert contract.check_read(wallet) == []
    renamed = copy.deepcopy(wallet)
    renamed["spec"]["fields"]["balance"] = renamed["spec"]["fields"].pop("currentBalance")
    assert any("balance: the client reads it" in p for p in contract.check_read(renamed))
    retyped = copy.deepcopy(wallet)
    retyped["spec"]["fields"]["currentBalance"]["kind"] = "integer"
    assert any("currentBalance" in p for p in contract.check_read(retyped))
    not_null = copy.deepcopy(wallet)
    not_null["spec"]["fields"]["flagReason"]["nullable"] = False
    assert any("allows null" in p for p in contract.check_read(not_null))
    text = copy.deepcopy(wallet)
    text["spec"]["fields"]["tenantId"]["kind"] = "decimal"
    assert any("not one" in p for p in contract.check_read(text))
