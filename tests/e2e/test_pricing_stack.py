"""Pricing models, multipliers, provider costs and margins on the real stack (PostgreSQL, Redis, the
Celery worker, gunicorn): every model and combination, quotes agreeing with the charges that follow
them, binding quotes keeping their tier prices, concurrency across a tier edge, and the invoice."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from billing_core.catalog.tables import tier_positions
from tests.support.helpers import Api, assert_ledger_consistent, top_up, wait_until_settled, wallet
from tests.support.pricing import TIERS, D, new_item, put_price


def charge(api: Api, token: str, item: dict[str, str], quantity: str, **extra) -> dict:  # noqa: ANN003
    response = api.post("/api/billing/charge?wait=20", token, json={
        "featureKey": extra.pop("featureKey", "calls"), "idempotencyKey": f"c-{uuid.uuid4()}",
        "items": [{**item, "quantity": quantity}], **extra})
    assert response.status_code == 200, response.text
    return response.json()


def items_of(api: Api, token: str, event_id: str) -> list[dict]:
    response = api.get(f"/api/billing/usage/{event_id}", token)
    assert response.status_code == 200, response.text
    return response.json()["usageEvent"]["items"]


def quote(api: Api, token: str, item: dict[str, str], quantity: str) -> dict:
    response = api.post("/api/billing/quote", token, json={"items": [{**item, "quantity": quantity}]})
    assert response.status_code == 200, response.text
    return response.json()["quote"]


def test_graduated_across_tier_edges_within_and_across_events(api, tokens, tenant):
    top_up(api, tokens["admin"], "100")
    item = new_item()
    price = put_price(api, tokens["admin"], item, tenantId=tenant, pricingModel="graduated", tiers=TIERS)
    assert price["pricingModel"] == "graduated" and price["unitPrice"] is None and price["tiers"][2]["upTo"] is None
    first = charge(api, tokens["charge"], item, "800")
    assert first["usageEvent"]["totalCost"] == "8"
    second = charge(api, tokens["charge"], item, "4400")  # 200 at 0.01, 4000 at 0.005, 200 at 0.001
    assert second["usageEvent"]["totalCost"] == "22.2"
    line = items_of(api, tokens["view"], second["usageEvent"]["id"])[0]
    assert line["pricingModel"] == "graduated" and line["billedQuantity"] == "4400"
    assert line["tiers"] == [{"quantity": "200", "unitPrice": "0.01", "amount": "2"},
                             {"quantity": "4000", "unitPrice": "0.005", "amount": "20"},
                             {"quantity": "200", "unitPrice": "0.001", "amount": "0.2"}]
    # a quote prices from where the month stands, and the charge after it agrees
    quoted = quote(api, tokens["any"], item, "100")
    assert quoted["totalCost"] == "0.1" and quoted["items"][0]["tiers"][0]["unitPrice"] == "0.001"
    assert charge(api, tokens["charge"], item, "100")["usageEvent"]["totalCost"] == quoted["totalCost"]
    # the other tenant starts at the first tier (its own position; here: it has no such price)
    assert wallet(api, tokens["any"])["currentBalance"] == "69.7"


def test_a_new_month_starts_at_zero_and_refunds_do_not_move_the_position(api, tokens, tenant, engine):
    top_up(api, tokens["admin"], "100")
    item = new_item()
    put_price(api, tokens["admin"], item, tenantId=tenant, pricingModel="graduated", tiers=TIERS)
    key = (item["category"], item["provider"], item["model"], item["unit"])
    last_month = (datetime.now(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
                  - timedelta(days=1)).replace(day=1)
    with engine.begin() as connection:  # the month before ended deep in the last tier
        connection.execute(tier_positions.insert().values(
            tenant_id=tenant, category=key[0], provider=key[1], model=key[2], unit=key[3],
            period_start=last_month, billed_quantity=D(900000), updated_at=datetime.now(timezone.utc)))
    charged = charge(api, tokens["charge"], item, "500")
    assert charged["usageEvent"]["totalCost"] == "5"  # this month: the first tier
    refund = api.post("/api/billing/refunds", tokens["admin"], json={
        "transactionId": charged["transaction"]["id"], "reason": "test", "idempotencyKey": f"r-{uuid.uuid4()}"})
    assert refund.status_code == 200, refund.text
    # refunded units were used: the position stays at 500
    assert charge(api, tokens["charge"], item, "600")["usageEvent"]["totalCost"] == "5.5"
    with engine.connect() as connection:
        positions = dict(connection.execute(
            select(tier_positions.c.period_start, tier_positions.c.billed_quantity)
            .where(tier_positions.c.tenant_id == tenant)).all())
    assert sorted(positions.values()) == [D(1100), D(900000)]


def test_package_with_minimum_and_unit_with_minimum(api, tokens, tenant):
    top_up(api, tokens["admin"], "10")
    minute = {**new_item("telephony"), "unit": "minute"}
    put_price(api, tokens["admin"], minute, tenantId=tenant, pricingModel="package", packageSize="1",
              packagePrice="0.013", minimumQuantity="1")
    quarter = charge(api, tokens["charge"], minute, "0.25")
    assert quarter["usageEvent"]["totalCost"] == "0.013"
    line = items_of(api, tokens["view"], quarter["usageEvent"]["id"])[0]
    assert line["pricingModel"] == "package" and line["billedQuantity"] == "1"
    assert line["packages"] == {"count": "1", "packageSize": "1", "packagePrice": "0.013", "amount": "0.013"}
    assert charge(api, tokens["charge"], minute, "2.5")["usageEvent"]["totalCost"] == "0.039"
    second = {**new_item("stt"), "unit": "second"}
    put_price(api, tokens["admin"], second, tenantId=tenant, unitPrice="0.0001", minimumQuantity="60")
    short = charge(api, tokens["charge"], second, "10")
    assert short["usageEvent"]["totalCost"] == "0.006"
    assert items_of(api, tokens["view"], short["usageEvent"]["id"])[0]["billedQuantity"] == "60"


def test_multipliers_scale_every_model_and_an_override_beats_them(api, tokens, tenant, make_token):
    top_up(api, tokens["admin"], "100")
    unit_item, package_item, graduated_item = new_item(), new_item(), new_item()
    put_price(api, tokens["admin"], unit_item, unitPrice="0.002")
    put_price(api, tokens["admin"], package_item, pricingModel="package", packageSize="10", packagePrice="0.5")
    put_price(api, tokens["admin"], graduated_item, pricingModel="graduated", tiers=TIERS)
    response = api.request("PUT", "/api/billing/pricing/adjustments", tokens["admin"],
                           json={"tenantId": tenant, "multiplier": "0.9"})
    assert response.status_code == 200, response.text
    assert quote(api, tokens["any"], unit_item, "1000")["totalCost"] == "1.8"
    assert quote(api, tokens["any"], package_item, "15")["totalCost"] == "0.9"
    assert quote(api, tokens["any"], graduated_item, "1200")["totalCost"] == "9.9"  # (10 + 1) x 0.9
    charged = charge(api, tokens["charge"], graduated_item, "1200")
    assert charged["usageEvent"]["totalCost"] == "9.9"
    assert items_of(api, tokens["view"], charged["usageEvent"]["id"])[0]["tiers"][1] == {
        "quantity": "200", "unitPrice": "0.0045", "amount": "0.9"}
    # more specific wins: the category of the unit item gets a markup
    api.request("PUT", "/api/billing/pricing/adjustments", tokens["admin"],
                json={"tenantId": tenant, "multiplier": "1.25", "model": unit_item["model"]})
    assert quote(api, tokens["any"], unit_item, "1000")["totalCost"] == "2.5"
    listed = api.get(f"/api/billing/pricing/adjustments?tenantId={tenant}", tokens["admin"]).json()["adjustments"]
    assert [a["multiplier"] for a in listed] == ["0.9", "1.25"]
    # the tenant's own price is never scaled
    put_price(api, tokens["admin"], unit_item, tenantId=tenant, unitPrice="0.001")
    assert quote(api, tokens["any"], unit_item, "1000")["totalCost"] == "1"
    # another tenant pays the list price
    other = make_token(f"t-{uuid.uuid4().hex[:12]}")
    assert quote(api, other, unit_item, "1000")["totalCost"] == "2"
    shown = api.get("/api/billing/pricing?" + "&".join(f"{k}={v}" for k, v in graduated_item.items()),
                    tokens["any"]).json()["price"]
    assert shown["multiplier"] == "0.9" and shown["tiers"][0]["unitPrice"] == "0.009"


def test_catalog_validation_refuses_and_changes_nothing(api, tokens):
    item = new_item()
    put_price(api, tokens["admin"], item, unitPrice="0.002")
    for body, field in [({"pricingModel": "package", "packageSize": "0", "packagePrice": "1"}, "packageSize"),
                        ({"pricingModel": "package", "packageSize": "5", "packagePrice": "1", "unitPrice": "1"},
                         "unitPrice"),
                        ({"pricingModel": "graduated", "tiers": [{"upTo": "5", "unitPrice": "1"},
                                                                 {"upTo": "2", "unitPrice": "1"},
                                                                 {"upTo": None, "unitPrice": "1"}]}, "tiers[1].upTo"),
                        ({"pricingModel": "graduated", "tiers": [{"upTo": "5", "unitPrice": "1"}]}, "tiers[0].upTo"),
                        ({"pricingModel": "unit", "unitPrice": "-1"}, "unitPrice")]:
        response = api.request("PUT", "/api/billing/pricing", tokens["admin"], json={**item, **body})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error" and field in str(error["details"]), (field, error)
    shown = api.get("/api/billing/pricing?" + "&".join(f"{k}={v}" for k, v in item.items()), tokens["any"]).json()
    assert shown["price"]["unitPrice"] == "0.002" and shown["price"]["pricingModel"] == "unit"
    bad_cost = api.request("PUT", "/api/billing/costs", tokens["admin"], json={**item, "unitCost": "-1"})
    assert bad_cost.status_code == 400 and bad_cost.json()["error"]["code"] == "validation_error"
    assert api.request("PUT", "/api/billing/costs", tokens["charge"], json={**item, "unitCost": "1"}).status_code == 403


def test_costs_and_margins_by_every_grouping(api, tokens, tenant):
    top_up(api, tokens["admin"], "100")
    costed, uncosted = new_item("llm"), new_item("tts")
    put_price(api, tokens["admin"], costed, tenantId=tenant, unitPrice="0.002")
    put_price(api, tokens["admin"], uncosted, tenantId=tenant, unitPrice="0.001")
    response = api.request("PUT", "/api/billing/costs", tokens["admin"], json={**costed, "unitCost": "0.0015"})
    assert response.status_code == 200, response.text
    assert any(c["unitCost"] == "0.0015" for c in api.get(
        f"/api/billing/costs?model={costed['model']}", tokens["admin"]).json()["costs"])
    first = charge(api, tokens["charge"], costed, "1000", featureKey="agent")
    charge(api, tokens["charge"], costed, "2000", featureKey="campaign")
    charge(api, tokens["charge"], uncosted, "1000", featureKey="agent")
    refund = api.post("/api/billing/refunds", tokens["admin"], json={
        "transactionId": first["transaction"]["id"], "amount": "0.5", "reason": "goodwill",
        "idempotencyKey": f"r-{uuid.uuid4()}"})
    assert refund.status_code == 200, refund.text

    def margins(group_by: str) -> dict:
        response = api.get(f"/api/billing/margins?groupBy={group_by}&tenantId={tenant}", tokens["admin"])
        assert response.status_code == 200, response.text
        return response.json()["margins"]

    total = margins("tenant")
    # revenue 2 - 0.5 + 4 = 5.5 on costed items, cost 1.5 + 3 = 4.5; the tts item is uncosted
    assert (total["revenue"], total["cost"], total["margin"], total["marginPercent"]) == ("5.5", "4.5", "1", "18.18")
    assert total["uncosted"] == {"revenue": "1", "items": 1}
    assert total["groups"] == [{"key": tenant, "revenue": "5.5", "cost": "4.5", "margin": "1",
                                "marginPercent": "18.18", "events": 3, "uncostedRevenue": "1", "uncostedItems": 1,
                                "corrections": "0"}]
    by_feature = {g["key"]: g for g in margins("featureKey")["groups"]}
    assert by_feature["agent"]["margin"] == "0" and by_feature["campaign"]["margin"] == "1"
    by_category = {g["key"]: g for g in margins("category")["groups"]}
    assert by_category["test_llm"]["revenue"] == "5.5" and by_category["test_tts"]["uncostedRevenue"] == "1"
    assert {g["key"] for g in margins("provider")["groups"]} == {"acme"}
    assert {g["key"] for g in margins("model")["groups"]} == {f"acme/{costed['model']}", f"acme/{uncosted['model']}"}
    assert api.get("/api/billing/margins", tokens["view"]).status_code == 403


def test_binding_quote_keeps_its_tier_prices(api, tokens, tenant):
    top_up(api, tokens["admin"], "100")
    item = new_item()
    put_price(api, tokens["admin"], item, tenantId=tenant, pricingModel="graduated", tiers=TIERS)
    quoted = quote(api, tokens["any"], item, "900")
    assert quoted["totalCost"] == "9"
    charge(api, tokens["charge"], item, "4000")  # the month moves on, past the first tier
    # a price change after the quote does not touch it either
    put_price(api, tokens["admin"], item, tenantId=tenant, pricingModel="graduated",
              tiers=[{"upTo": None, "unitPrice": "1"}])
    bound = charge(api, tokens["charge"], item, "900", quoteId=quoted["quoteId"])
    assert bound["usageEvent"]["totalCost"] == "9"
    # and it counted towards the month: 4900 billed so far, so the next unit is at the new price
    assert charge(api, tokens["charge"], item, "1")["usageEvent"]["totalCost"] == "1"


def test_invoice_tier_lines_are_separate_and_reconcile(api, tokens, tenant):
    top_up(api, tokens["admin"], "100")
    item = new_item()
    put_price(api, tokens["admin"], item, tenantId=tenant, pricingModel="graduated", tiers=TIERS)
    block = {**new_item("telephony"), "unit": "second"}
    put_price(api, tokens["admin"], block, tenantId=tenant, pricingModel="package", packageSize="15",
              packagePrice="0.004")
    charge(api, tokens["charge"], item, "1500")
    charge(api, tokens["charge"], block, "31")
    invoice = api.get("/api/billing/invoices/preview", tokens["view"]).json()["invoice"]
    assert invoice["reconciliation"]["balanced"] is True
    lines = {(line["unit"], line["unitPrice"]): line for line in invoice["lines"]}
    assert lines[("token", "0.01")]["quantity"] == "1000" and lines[("token", "0.005")]["quantity"] == "500"
    assert lines[("15 second", "0.004")]["quantity"] == "3"
    assert invoice["totalUsageExact"] == "12.512"
    for line in invoice["lines"]:
        assert D(line["quantity"]) * D(line["unitPrice"]) == D(line["exactAmount"])


def test_200_concurrent_charges_across_a_tier_edge_through_two_worker_processes(live, tokens, tenant, make_token):
    top_up(live.api, tokens["admin"], "1000")
    item = new_item()
    put_price(live.api, tokens["admin"], item, tenantId=tenant, pricingModel="graduated",
              tiers=[{"upTo": "700", "unitPrice": "0.03"}, {"upTo": None, "unitPrice": "0.007"}])
    second = live.stack.start_worker(log=live.logs / "tier-racer.log", concurrency=2, name="tier-racer")
    clients = [Api(live.api.base_url) for _ in range(16)]
    try:
        def send(i: int) -> str:
            response = clients[i % 16].post("/api/billing/charge?wait=0", tokens["charge"], json={
                "featureKey": "calls", "idempotencyKey": f"edge-{i}", "items": [{**item, "quantity": "7"}]})
            assert response.status_code == 202, response.text
            return response.json()["taskId"]

        with ThreadPoolExecutor(16) as pool:
            task_ids = list(pool.map(send, range(200)))
        states = wait_until_settled(live.api, tokens["charge"], task_ids, timeout=120)
    finally:
        live.stack.stop_process("tier-racer")
    assert {t["state"] for t in states.values()} == {"charged"}
    charged = sum((D(t["usageEvent"]["totalCost"]) for t in states.values()), D(0))
    expected = 700 * D("0.03") + 700 * D("0.007")
    assert charged == expected
    assert D(wallet(live.api, tokens["any"])["currentBalance"]) == 1000 - expected
    assert_ledger_consistent(live.api, make_token, tenant)
    assert second.poll() is not None




def test_operators_see_margin_per_invoice_line_and_tenants_do_not(api, tokens, tenant):
    top_up(api, tokens["admin"], "100")
    item = new_item()
    put_price(api, tokens["admin"], item, tenantId=tenant, pricingModel="graduated", tiers=TIERS)
    assert api.request("PUT", "/api/billing/costs", tokens["admin"], json={**item, "unitCost": "0.004"}).ok
    block = {**new_item("telephony"), "unit": "second"}
    put_price(api, tokens["admin"], block, tenantId=tenant, pricingModel="package", packageSize="15",
              packagePrice="0.004")
    charge(api, tokens["charge"], item, "1500")
    charge(api, tokens["charge"], block, "31")
    response = api.get("/api/billing/invoices/margins", tokens["admin"])
    assert response.status_code == 200, response.text
    lines = {(line["unit"], line["unitPrice"]): line for line in response.json()["invoiceMargins"]["lines"]}
    first, second = lines[("token", "0.01")], lines[("token", "0.005")]
    assert (first["revenue"], first["cost"], first["margin"], first["marginPercent"]) == ("10", "4", "6", "60")
    assert (second["revenue"], second["cost"], second["margin"]) == ("2.5", "2", "0.5")
    assert lines[("15 second", "0.004")]["uncostedItems"] == 1 and lines[("15 second", "0.004")]["cost"] == "0"
    assert api.get("/api/billing/invoices/margins", tokens["view"]).status_code == 403
    tenant_invoice = api.get("/api/billing/invoices/preview", tokens["view"]).json()["invoice"]
    assert not [key for line in tenant_invoice["lines"] for key in line if "cost" in key.lower() or "margin" in key]


def test_entitlement_estimates_an_item_as_a_quote_prices_it(api, tokens, tenant):
    top_up(api, tokens["admin"], "9")
    item = new_item()
    put_price(api, tokens["admin"], item, tenantId=tenant, pricingModel="graduated", tiers=TIERS)
    query = "&".join(f"{k}={v}" for k, v in item.items())

    def allowed(quantity: str) -> bool:
        response = api.get(f"/api/billing/entitlement?featureKey=calls&{query}&quantity={quantity}", tokens["charge"])
        assert response.status_code == 200, response.text
        return response.json()["entitlement"]["allowed"]

    assert allowed("900") and not allowed("1000")  # 9 fits, 10 does not
    charge(api, tokens["charge"], item, "500")  # 5 of the 9; the month now stands at 500
    assert allowed("400") and not allowed("401")
    missing = api.get(f"/api/billing/entitlement?featureKey=calls&category={item['category']}", tokens["charge"])
    assert missing.status_code == 400 and missing.json()["error"]["details"]["field"] == "provider"
