"""/openapi.json describes the API truthfully: schemathesis, against the running service, finds no
5xx and no response that violates the documented schema."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

FUZZ_TENANT = "schemathesis-tenant"


@pytest.fixture(scope="package")
def openapi_schema(live):
    return schemathesis.openapi.from_url(f"{live.api.base_url}/openapi.json")


@pytest.fixture(scope="session")
def fuzz_headers(make_token):
    token = make_token(FUZZ_TENANT, "billing.admin", "billing.charge", "billing.view")
    return {"Authorization": f"Bearer {token}"}


# PUT /pricing with no tenant changes the global catalog every test shares; it has its own tests
schema = schemathesis.pytest.from_fixture("openapi_schema").exclude(method="PUT", path="/api/billing/pricing")


def test_document_is_openapi_3_1_and_covers_every_endpoint(api):
    document = api.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert {"/api/billing/pricing", "/api/billing/quote", "/api/billing/wallet", "/api/billing/topup",
            "/api/billing/charge", "/api/billing/tasks/{task_id}", "/api/billing/usage",
            "/api/billing/usage/{usage_event_id}", "/api/billing/transactions", "/api/billing/ledger/verify",
            "/healthz", "/readyz", "/openapi.json", "/api/billing/charges", "/api/billing/reservations",
            "/api/billing/reservations/{reservation_id}", "/api/billing/reservations/{reservation_id}/extend",
            "/api/billing/reservations/{reservation_id}/release", "/api/billing/budgets",
            "/api/billing/budgets/{feature_key}", "/api/billing/refunds", "/api/billing/adjustments",
            "/api/billing/entitlement", "/api/billing/webhooks/stripe", "/api/billing/settings/alerts",
            "/api/billing/notifications", "/api/billing/notifications/{notification_id}"} <= set(document["paths"])
    assert {"get", "put"} <= set(document["paths"]["/api/billing/pricing"])
    assert {"get", "patch"} <= set(document["paths"]["/api/billing/wallet"])


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case, fuzz_headers):
    case.call_and_validate(headers=fuzz_headers, checks=[not_a_server_error, response_schema_conformance])
