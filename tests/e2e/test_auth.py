"""Tokens: signature, algorithm, expiry and claims; capabilities; tenant isolation."""
from __future__ import annotations

import jwt
import pytest

from tests.support.helpers import stt_items, top_up
from tests.support.tokens import claims


def assert_401(response):
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "unauthorized"


def test_missing_token(api):
    assert_401(api.get("/api/billing/wallet"))
    assert_401(api.get("/api/billing/wallet", headers={"Authorization": "Basic abc"}))


def test_token_signed_with_another_key(api, tenant):
    assert_401(api.get("/api/billing/wallet", jwt.encode(claims(tenant), "another-key", algorithm="HS256")))


def test_alg_none_token(api, tenant):
    token = jwt.encode(claims(tenant), None, algorithm="none")
    assert_401(api.get("/api/billing/wallet", token))


def test_expired_token(api, tenant, make_token):
    assert_401(api.get("/api/billing/wallet", make_token(tenant, "billing.admin", ttl=-10)))


def test_token_without_exp_or_tenant(api, tenant):
    from tests.support.stack import TEST_SECRET

    no_exp = {k: v for k, v in claims(tenant).items() if k != "exp"}
    assert_401(api.get("/api/billing/wallet", jwt.encode(no_exp, TEST_SECRET, algorithm="HS256")))
    no_tenant = {k: v for k, v in claims(tenant).items() if k != "tenantId"}
    assert_401(api.get("/api/billing/wallet", jwt.encode(no_tenant, TEST_SECRET, algorithm="HS256")))
    bad_tenant = claims("bad tenant id with spaces")
    assert_401(api.get("/api/billing/wallet", jwt.encode(bad_tenant, TEST_SECRET, algorithm="HS256")))


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/billing/topup", {"amount": 1, "idempotencyKey": "k"}),
    ("POST", "/api/billing/charge", {"featureKey": "f", "items": stt_items("1")}),
    ("GET", "/api/billing/usage", None),
    ("GET", "/api/billing/transactions", None),
    ("GET", "/api/billing/ledger/verify", None),
])
def test_missing_capability_is_403(api, tokens, method, path, body):
    response = api.request(method, path, tokens["any"], json=body)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_other_tenants_ids_answer_404_and_leak_nothing(api, make_token, tenant):
    victim = tenant
    attacker = tenant + "-other"
    top_up(api, make_token(victim, "billing.admin"), "10")
    charge = api.post("/api/billing/charge", make_token(victim, "billing.charge"),
                      json={"featureKey": "f", "idempotencyKey": "k", "items": stt_items("1")})
    assert charge.status_code == 200, charge.text
    event_id, task_id = charge.json()["usageEvent"]["id"], charge.json()["taskId"]

    spy = make_token(attacker, "billing.view", "billing.charge")
    for path in (f"/api/billing/usage/{event_id}", f"/api/billing/tasks/{task_id}"):
        response = api.get(path, spy)
        assert response.status_code == 404
        assert victim not in response.text and "featureKey" not in response.text
    assert api.get("/api/billing/usage", spy).json()["usage"]["events"] == []
    assert api.get("/api/billing/transactions", spy).json()["transactions"] == []
    # naming the tenant explicitly needs billing.admin
    response = api.get(f"/api/billing/usage/{event_id}?tenantId={victim}", spy)
    assert response.status_code == 403


def test_admin_may_act_on_another_tenant(api, make_token, tenant):
    admin = make_token("ops-tenant", "billing.admin")
    response = api.post("/api/billing/topup", admin, json={"amount": "7", "idempotencyKey": "k", "tenantId": tenant})
    assert response.status_code == 200
    assert api.get(f"/api/billing/wallet?tenantId={tenant}", admin).json()["wallet"]["currentBalance"] == "7"
    assert api.get("/api/billing/wallet", make_token(tenant)).json()["wallet"]["currentBalance"] == "7"


