"""Bad input gets a clear error with a stable code and the offending field, and writes nothing."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from billing_core.idempotency import idempotency_records
from billing_core.ledger.tables import ledger_entries
from billing_core.usage.tables import usage_events
from tests.support.helpers import stt_items, top_up, wallet


def charge_body(**item_overrides):
    item = {**stt_items("10")[0], **item_overrides}
    return {"featureKey": "voice-agent", "idempotencyKey": "k-1", "items": [item]}


def nothing_written(engine, tenant: str) -> bool:
    with engine.connect() as connection:
        events = connection.execute(
            select(func.count()).select_from(usage_events).where(usage_events.c.tenant_id == tenant)).scalar_one()
        charge_keys = connection.execute(select(func.count()).select_from(idempotency_records).where(
            idempotency_records.c.tenant_id == tenant, idempotency_records.c.operation == "charge")).scalar_one()
        debits = connection.execute(select(func.count()).select_from(ledger_entries).where(
            ledger_entries.c.tenant_id == tenant, ledger_entries.c.entry_type == "debit")).scalar_one()
    return events == charge_keys == debits == 0


def raw_charge(api, token, text: str):
    return api.post("/api/billing/charge", token, data=text.encode(), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("quantity_json, message", [
    ("-1", "negative"),
    ('"abc"', "decimal"),
    ("NaN", "finite"),
    ("Infinity", "finite"),
    ("1e400", "exceed"),
    ("true", "decimal"),
    ('"1e-20"', "decimal places"),
])
def test_bad_quantity(api, tokens, tenant, engine, quantity_json, message):
    top_up(api, tokens["admin"], "10")
    body = json.dumps(charge_body(quantity="PLACEHOLDER")).replace('"PLACEHOLDER"', quantity_json)
    response = raw_charge(api, tokens["charge"], body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"]["field"] == "items[0].quantity"
    assert message in error["message"]
    assert nothing_written(engine, tenant)
    assert wallet(api, tokens["any"])["currentBalance"] == "10"


def test_missing_unit(api, tokens, tenant, engine):
    body = charge_body()
    del body["items"][0]["unit"]
    response = api.post("/api/billing/charge", tokens["charge"], json=body)
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "items[0].unit"
    assert nothing_written(engine, tenant)


@pytest.mark.parametrize("count", [0, 10_001])
def test_item_count_out_of_bounds(api, tokens, tenant, engine, count):
    body = {"featureKey": "voice-agent", "idempotencyKey": "k", "items": stt_items("1") * count}
    response = api.post("/api/billing/charge", tokens["charge"], json=body)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["details"]["field"] == "items"
    assert nothing_written(engine, tenant)


def test_ten_megabyte_body_is_413(api, tokens, tenant, engine):
    body = json.dumps({"featureKey": "voice-agent", "items": stt_items("1"), "metadata": {"pad": "x" * 10_000_000}})
    response = raw_charge(api, tokens["charge"], body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert nothing_written(engine, tenant)


def test_unknown_category_is_price_not_found_with_index(api, tokens, tenant, engine):
    top_up(api, tokens["admin"], "10")
    body = {"featureKey": "voice-agent", "idempotencyKey": "k",
            "items": stt_items("1") + [{**stt_items("1")[0], "category": "teleportation"}]}
    response = api.post("/api/billing/charge", tokens["charge"], json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "price_not_found"
    assert error["details"]["index"] == 1 and error["details"]["field"] == "items[1]"
    assert nothing_written(engine, tenant)
    assert wallet(api, tokens["any"])["currentBalance"] == "10"

    quote = api.post("/api/billing/quote", tokens["any"], json={"items": body["items"]})
    assert quote.status_code == 422 and quote.json()["error"]["details"]["index"] == 1


def test_single_price_lookup_not_found_is_404(api, tokens):
    response = api.get("/api/billing/pricing?category=stt&provider=openai&model=whisper-9&unit=second", tokens["any"])
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "price_not_found"


@pytest.mark.parametrize("text, field", [
    ("", "body"), ("not json", "body"), ("[1, 2]", "body"), ('{"items": "x"}', "featureKey"),
    ("[" * 100_000 + "]" * 100_000, "body"),
])
def test_malformed_bodies(api, tokens, tenant, engine, text, field):
    response = raw_charge(api, tokens["charge"], text)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["details"]["field"] == field
    assert nothing_written(engine, tenant)


@pytest.mark.parametrize("amount", [0, -5, "NaN", True, "1e999"])
def test_non_positive_or_invalid_topup(api, tokens, tenant, amount):
    response = api.post("/api/billing/topup", tokens["admin"], json={"amount": amount, "idempotencyKey": "t"})
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "amount"
    assert wallet(api, tokens["any"])["currentBalance"] == "0"


def test_topup_requires_idempotency_key(api, tokens):
    response = api.post("/api/billing/topup", tokens["admin"], json={"amount": 1})
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "idempotencyKey"


@pytest.mark.parametrize("query, field", [
    ("wait=31", "wait"), ("wait=abc", "wait"),
])
def test_bad_charge_query(api, tokens, query, field):
    response = api.post(f"/api/billing/charge?{query}", tokens["charge"], json=charge_body())
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == field


@pytest.mark.parametrize("query, field", [
    ("from=yesterday", "from"), ("to=2025-13-45", "to"), ("limit=0", "limit"), ("limit=501", "limit"),
    ("status=lost", "status"), ("cursor=%%%", "cursor"), ("to=9999-12-31", None),
])
def test_bad_usage_query(api, tokens, query, field):
    response = api.get(f"/api/billing/usage?{query}", tokens["view"])
    if field is None:
        assert response.status_code == 200
        return
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"]["field"] == field


def test_unknown_usage_event_is_404(api, tokens):
    for path in ("/api/billing/usage/not-a-uuid", "/api/billing/usage/00000000-0000-0000-0000-000000000000",
                 "/api/billing/tasks/nope"):
        response = api.get(path, tokens["charge"])
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_unknown_route_and_method(api, tokens):
    assert api.get("/api/billing/nothing-here", tokens["any"]).json()["error"]["code"] == "not_found"
    response = api.request("DELETE", "/api/billing/wallet", tokens["any"])
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("field, value", [
    ("idempotencyKey", "a\u0000b"), ("externalReferenceId", "\u0000"), ("metadata", {"k": "v\u0000"}),
])
def test_nul_characters_are_refused_before_the_database(api, tokens, tenant, engine, field, value):
    body = {**charge_body(), field: value}
    response = api.post("/api/billing/charge", tokens["charge"], json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"]["field"].startswith(field)
    assert nothing_written(engine, tenant)


def test_nul_in_topup_description_is_refused(api, tokens):
    response = api.post("/api/billing/topup", tokens["admin"],
                        json={"amount": 1, "idempotencyKey": "k", "description": "x\u0000"})
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "description"


def test_metadata_numbers_are_stored_exactly(api, tokens):
    top_up(api, tokens["admin"], "1")
    body = {**charge_body(), "metadata": {"duration": 45.5, "tiny": 1e-30, "nested": [{"n": 3}], "ok": True}}
    response = api.post("/api/billing/charge", tokens["charge"], json=body)
    assert response.status_code == 200, response.text
    detail = api.get(f"/api/billing/usage/{response.json()['usageEvent']['id']}", tokens["view"])
    assert '"duration":45.5' in detail.text and '"tiny":1E-30' in detail.text.replace("e-", "E-")
    assert detail.json()["usageEvent"]["metadata"]["nested"] == [{"n": 3}]


@pytest.mark.parametrize("text, field", [
    ('{"featureKey": "f", "items": [{"category": "stt", "provider": "openai", "model": "whisper-1", '
     '"unit": "second", "quantity": 1e1000000000000000000}]}', "body"),
    ('{"featureKey": "f", "metadata": {"s": "\\ud800"}, "items": [{"category": "stt", "provider": "openai", '
     '"model": "whisper-1", "unit": "second", "quantity": 1}]}', "metadata"),
    ('{"featureKey": "f", "metadata": {"n": NaN}, "items": [{"category": "stt", "provider": "openai", '
     '"model": "whisper-1", "unit": "second", "quantity": 1}]}', "metadata"),
])
def test_numbers_and_text_postgres_cannot_hold(api, tokens, tenant, engine, text, field):
    response = raw_charge(api, tokens["charge"], text)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"]["field"].startswith(field)
    assert nothing_written(engine, tenant)


@pytest.mark.parametrize("path", [
    "/api/billing/transactions?cursor=%C2%B2",
    # base64 of ["2025-01-01T00:00:00+00:00", 1]
    "/api/billing/usage?cursor=WyIyMDI1LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgMV0",
    # base64 of ["2025-01-01T00:00:00+20:00", "00000000-0000-0000-0000-000000000000"]
    "/api/billing/usage?cursor=WyIyMDI1LTAxLTAxVDAwOjAwOjAwKzIwOjAwIiwgIjAwMDAwMDAwLTAwMDAtMDAwMC0wMDAwLTAwMDAwMDAwMDAwMCJd",
])
def test_forged_cursors(api, tokens, path):
    response = api.get(path, tokens["view"])
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["details"]["field"] == "cursor"


def test_far_time_zone_offsets_are_converted_to_utc(api, tokens):
    response = api.get("/api/billing/usage?from=2025-12-01T00:00:00%2B20:00&to=2025-12-02T00:00:00-23:59", tokens["view"])
    assert response.status_code == 200, response.text


def test_conflicting_tenants_in_body_and_query(api, make_token, tenant):
    admin = make_token(tenant, "billing.admin")
    response = api.post(f"/api/billing/charge?tenantId={tenant}-a", admin, json={**charge_body(), "tenantId": f"{tenant}-b"})
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "tenantId"


def test_method_not_allowed_names_the_allowed_methods(api, tokens):
    response = api.request("PUT", "/api/billing/charge", tokens["any"])
    assert response.status_code == 405 and "POST" in response.headers["Allow"]


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00"])
def test_dates_past_the_calendar_in_utc_are_400(api, tokens, moment):
    response = api.post("/api/billing/topup", tokens["admin"], json={"amount": "1", "idempotencyKey": "k",
                                                                     "expiresAt": moment})
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "expiresAt"
    response = api.request("PUT", "/api/billing/pricing", tokens["admin"], json={
        "category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second", "unitPrice": "1",
        "effectiveFrom": moment, "tenantId": "x"})
    assert response.status_code == 400
