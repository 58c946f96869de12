"""Reservations (holds) and binding quotes on the real stack: success paths, every error code,
idempotent replay and tenant isolation."""
from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import text

from tests.support.helpers import assert_ledger_consistent, stt_items, top_up, wallet
from tests.support.jobs import sweep_pending_charges
from tests.support.polling import eventually

R = "/api/billing/reservations"


def reserve(api, token, amount="1", *, key=None, feature="voice-call", ttl=900, **extra):
    body = {"featureKey": feature, "amount": amount, "ttlSeconds": ttl,
            "idempotencyKey": key or f"hold-{uuid.uuid4()}", **extra}
    return api.post(R, token, json=body)


def settle(api, token, reservation_id, seconds, *, feature="voice-call", **extra):
    return api.post("/api/billing/charge", token, json={
        "featureKey": feature, "items": stt_items(seconds), "reservationId": reservation_id,
        "idempotencyKey": f"settle-{uuid.uuid4()}", **extra})


def entries(api, token, entry_type=None):
    suffix = f"&type={entry_type}" if entry_type else ""
    return api.get(f"/api/billing/transactions?limit=500{suffix}", token).json()["transactions"]


def test_a_hold_lowers_the_available_balance_at_once_and_is_shown(api, tokens, tenant, make_token):
    top_up(api, tokens["admin"], "10")
    response = reserve(api, tokens["charge"], "3.5", externalReferenceId="call-1")
    assert response.status_code == 200, response.text
    hold = response.json()["reservation"]
    assert hold["status"] == "active" and hold["amount"] == "3.5" and hold["settledAmount"] is None
    assert hold["featureKey"] == "voice-call" and hold["externalReferenceId"] == "call-1"
    assert hold["expiresAt"] > hold["createdAt"]
    w = wallet(api, tokens["any"])
    assert (w["currentBalance"], w["reservedBalance"], w["availableBalance"]) == ("10", "3.5", "6.5")
    assert api.get(f"{R}/{hold['id']}", tokens["view"]).json()["reservation"] == hold
    listed = api.get(f"{R}?status=active", tokens["view"]).json()
    assert [r["id"] for r in listed["reservations"]] == [hold["id"]] and listed["nextCursor"] is None
    assert api.get(f"{R}?status=settled", tokens["view"]).json()["reservations"] == []
    [entry] = entries(api, tokens["view"], "hold")
    assert entry["amount"] == "0" and entry["reservedChange"] == "3.5" and entry["reservationId"] == hold["id"]
    assert_ledger_consistent(api, make_token, tenant)


def test_a_hold_that_does_not_fit_is_402_and_writes_nothing(api, tokens):
    top_up(api, tokens["admin"], "1")
    response = reserve(api, tokens["charge"], "1.01")
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_balance"
    assert wallet(api, tokens["any"])["reservedBalance"] == "0"
    assert api.get(R, tokens["view"]).json()["reservations"] == []


def test_holds_are_priced_from_items_and_by_a_binding_quote(api, tokens):
    top_up(api, tokens["admin"], "10")
    response = api.post(R, tokens["charge"], json={"featureKey": "voice-call", "items": stt_items("25000"),
                                                   "idempotencyKey": "by-items"})
    assert response.json()["reservation"]["amount"] == "2.5"
    quote = api.post("/api/billing/quote", tokens["any"], json={"items": stt_items("10000")}).json()["quote"]
    response = api.post(R, tokens["charge"], json={"featureKey": "voice-call", "items": stt_items("20000"),
                                                   "quoteId": quote["quoteId"], "idempotencyKey": "by-quote"})
    assert response.json()["reservation"]["amount"] == "2"
    assert response.json()["reservation"]["quoteId"] == quote["quoteId"]
    both = api.post(R, tokens["charge"], json={"featureKey": "f", "amount": "1", "items": stt_items(),
                                               "idempotencyKey": "both"})
    assert both.status_code == 400 and both.json()["error"]["details"]["field"] == "amount"


def test_replay_returns_the_same_hold_and_another_body_is_409(api, tokens):
    top_up(api, tokens["admin"], "10")
    first = reserve(api, tokens["charge"], "2", key="k1")
    again = reserve(api, tokens["charge"], "2", key="k1")
    assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["reservation"]["id"] == first.json()["reservation"]["id"]
    assert wallet(api, tokens["any"])["reservedBalance"] == "2"
    other = reserve(api, tokens["charge"], "3", key="k1")
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


def test_a_charge_settles_its_hold_once_debiting_the_cost_and_releasing_the_rest(api, tokens):
    top_up(api, tokens["admin"], "10")
    hold = reserve(api, tokens["charge"], "4").json()["reservation"]
    response = settle(api, tokens["charge"], hold["id"], "15000")  # costs 1.5
    assert response.status_code == 200, response.text
    debit = response.json()["transaction"]
    assert debit["amount"] == "-1.5" and debit["reservedChange"] == "-4" and debit["reservationId"] == hold["id"]
    w = wallet(api, tokens["any"])
    assert (w["currentBalance"], w["reservedBalance"], w["availableBalance"]) == ("8.5", "0", "8.5")
    settled = api.get(f"{R}/{hold['id']}", tokens["view"]).json()["reservation"]
    assert settled["status"] == "settled" and settled["settledAmount"] == "1.5"
    assert settled["usageEventId"] == response.json()["usageEvent"]["id"]
    again = settle(api, tokens["charge"], hold["id"], "100")
    assert again.status_code == 409 and again.json()["error"]["code"] == "reservation_closed"
    assert api.post(f"{R}/{hold['id']}/release", tokens["charge"]).json()["error"]["code"] == "reservation_closed"
    assert wallet(api, tokens["any"])["currentBalance"] == "8.5"


def test_a_cost_above_the_hold_takes_the_rest_from_the_available_balance_or_is_refused(api, tokens):
    """Under the `strict` settlement policy (the default, `grace`, charges it in full: test_calls.py)."""
    assert api.request("PATCH", "/api/billing/wallet", tokens["admin"],
                       json={"settlementPolicy": "strict"}).status_code == 200
    top_up(api, tokens["admin"], "5")
    hold = reserve(api, tokens["charge"], "2").json()["reservation"]
    response = settle(api, tokens["charge"], hold["id"], "30000")  # 3: 2 held + 1 available
    assert response.status_code == 200, response.text
    assert wallet(api, tokens["any"])["currentBalance"] == "2"
    hold = reserve(api, tokens["charge"], "1").json()["reservation"]
    refused = settle(api, tokens["charge"], hold["id"], "40000")  # 4 > 1 held + 1 available
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "reservation_exceeded"
    assert refused.json()["error"]["details"]["held"] == "1"
    # the hold stays active: the caller may extend it and settle again, or release it
    assert api.get(f"{R}/{hold['id']}", tokens["view"]).json()["reservation"]["status"] == "active"
    w = wallet(api, tokens["any"])
    assert (w["currentBalance"], w["reservedBalance"]) == ("2", "1")


def test_release_gives_the_hold_back_and_a_second_release_changes_nothing(api, tokens):
    top_up(api, tokens["admin"], "10")
    hold = reserve(api, tokens["charge"], "6").json()["reservation"]
    released = api.post(f"{R}/{hold['id']}/release", tokens["charge"], json={"idempotencyKey": "rel-1"})
    assert released.status_code == 200 and released.json()["reservation"]["status"] == "released"
    assert wallet(api, tokens["any"])["availableBalance"] == "10"
    again = api.post(f"{R}/{hold['id']}/release", tokens["charge"])
    assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert len(entries(api, tokens["view"], "hold_release")) == 1
    refused = settle(api, tokens["charge"], hold["id"], "100")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "reservation_closed"
    extend = api.post(f"{R}/{hold['id']}/extend", tokens["charge"], json={"amount": "1", "idempotencyKey": "x"})
    assert extend.status_code == 409 and extend.json()["error"]["code"] == "reservation_closed"


def test_extend_holds_more_and_longer_and_refuses_what_does_not_fit(api, tokens):
    top_up(api, tokens["admin"], "10")
    hold = reserve(api, tokens["charge"], "2", ttl=60).json()["reservation"]
    body = {"amount": "3", "ttlSeconds": 3600, "idempotencyKey": "ext-1"}
    extended = api.post(f"{R}/{hold['id']}/extend", tokens["charge"], json=body)
    assert extended.status_code == 200, extended.text
    assert extended.json()["reservation"]["amount"] == "5"
    assert extended.json()["reservation"]["expiresAt"] > hold["expiresAt"]
    replay = api.post(f"{R}/{hold['id']}/extend", tokens["charge"], json=body)
    assert replay.headers.get("Idempotent-Replayed") == "true" and replay.json()["reservation"]["amount"] == "5"
    assert wallet(api, tokens["any"])["reservedBalance"] == "5"
    too_much = api.post(f"{R}/{hold['id']}/extend", tokens["charge"], json={"amount": "6", "idempotencyKey": "e2"})
    assert too_much.status_code == 402 and too_much.json()["error"]["code"] == "insufficient_balance"
    neither = api.post(f"{R}/{hold['id']}/extend", tokens["charge"], json={"idempotencyKey": "e3"})
    assert neither.status_code == 400
    assert wallet(api, tokens["any"])["reservedBalance"] == "5"


def test_an_expired_hold_is_released_and_cannot_be_settled_or_extended(api, tokens, clock):
    top_up(api, tokens["admin"], "10")
    hold = reserve(api, tokens["charge"], "4", ttl=1).json()["reservation"]
    clock.advance(1.2)  # the hold's TTL is one second; nothing polls for this
    refused = settle(api, tokens["charge"], hold["id"], "100")
    assert refused.status_code == 410 and refused.json()["error"]["code"] == "reservation_expired"
    extend = api.post(f"{R}/{hold['id']}/extend", tokens["charge"], json={"ttlSeconds": 60, "idempotencyKey": "e"})
    assert extend.status_code == 410
    w = wallet(api, tokens["any"])  # reading the wallet ends what is due, as the beat job does
    assert (w["reservedBalance"], w["availableBalance"]) == ("0", "10")
    assert api.get(f"{R}/{hold['id']}", tokens["view"]).json()["reservation"]["status"] == "expired"
    [release] = entries(api, tokens["view"], "hold_release")
    assert release["reservedChange"] == "-4" and release["description"] == "hold expired"


def test_a_charge_must_name_the_holds_feature(api, tokens):
    top_up(api, tokens["admin"], "10")
    hold = reserve(api, tokens["charge"], "1").json()["reservation"]
    response = settle(api, tokens["charge"], hold["id"], "100", feature="other-feature")
    assert response.status_code == 400 and response.json()["error"]["details"]["field"] == "featureKey"


def test_another_tenants_hold_is_not_found_anywhere(api, tokens, make_token):
    other = f"t-{uuid.uuid4().hex[:12]}"
    top_up(api, make_token(other, "billing.admin"), "10")
    theirs = reserve(api, make_token(other, "billing.charge"), "1").json()["reservation"]
    top_up(api, tokens["admin"], "10")
    assert api.get(f"{R}/{theirs['id']}", tokens["view"]).status_code == 404
    assert api.post(f"{R}/{theirs['id']}/release", tokens["charge"]).status_code == 404
    assert api.post(f"{R}/{theirs['id']}/extend", tokens["charge"],
                    json={"amount": "1", "idempotencyKey": "x"}).status_code == 404
    charge = settle(api, tokens["charge"], theirs["id"], "100")
    assert charge.status_code == 404 and charge.json()["error"]["details"]["field"] == "reservationId"
    assert api.get(R, tokens["view"]).json()["reservations"] == []
    assert api.get(f"{R}/not-a-uuid", tokens["view"]).status_code == 404
    assert api.get(f"{R}/{theirs['id']}", make_token(other, "billing.view")).json()["reservation"]["status"] == "active"


def test_reservations_need_the_charge_capability(api, tokens):
    assert reserve(api, tokens["view"], "1").status_code == 403
    assert api.get(R, tokens["any"]).status_code == 403


def test_reservations_page_newest_first(api, tokens):
    top_up(api, tokens["admin"], "10")
    ids = [reserve(api, tokens["charge"], "0.1").json()["reservation"]["id"] for _ in range(5)]
    seen, cursor = [], ""
    while True:
        page = api.get(f"{R}?limit=2{cursor}", tokens["view"]).json()
        seen += [r["id"] for r in page["reservations"]]
        if not page["nextCursor"]:
            break
        cursor = f"&cursor={page['nextCursor']}"
    assert seen == list(reversed(ids))
    assert api.get(f"{R}?cursor=garbage", tokens["view"]).status_code == 400


# --- binding quotes -------------------------------------------------------------------------------


def _override(api, admin_token, tenant, unit_price):
    response = api.request("PUT", "/api/billing/pricing", admin_token, json={
        "category": "stt", "provider": "openai", "model": "whisper-1", "unit": "second", "unitPrice": unit_price,
        "tenantId": tenant})
    assert response.status_code == 200, response.text


def test_a_quote_is_binding_until_it_expires(api, tokens, tenant, engine):
    top_up(api, tokens["admin"], "100")
    quote = api.post("/api/billing/quote", tokens["any"], json={"items": stt_items("10000")}).json()["quote"]
    assert quote["totalCost"] == "1" and quote["quoteId"]
    _override(api, tokens["admin"], tenant, "0.0002")  # the catalog doubles for this tenant
    bound = api.post("/api/billing/charge", tokens["charge"], json={
        "featureKey": "voice-call", "items": stt_items("20000"), "quoteId": quote["quoteId"]})
    assert bound.status_code == 200, bound.text
    assert bound.json()["usageEvent"]["totalCost"] == "2"  # the quoted 0.0001, not 0.0002
    unbound = api.post("/api/billing/charge", tokens["charge"], json={
        "featureKey": "voice-call", "items": stt_items("20000")})
    assert unbound.json()["usageEvent"]["totalCost"] == "4"
    # an item the quote did not price is priced from the catalog
    mixed = api.post("/api/billing/charge", tokens["charge"], json={
        "featureKey": "voice-call", "quoteId": quote["quoteId"],
        "items": [*stt_items("10000"), {"category": "telephony", "provider": "twilio", "model": "voice",
                                        "unit": "minute", "quantity": "1"}]})
    assert mixed.json()["usageEvent"]["totalCost"] == "1.013"
    with engine.begin() as connection:  # let the quote's fifteen minutes pass
        connection.execute(text("UPDATE quotes SET expires_at = now() - interval '1 second' WHERE id = :q"),
                           {"q": quote["quoteId"]})
    expired = api.post("/api/billing/charge", tokens["charge"], json={
        "featureKey": "voice-call", "items": stt_items("100"), "quoteId": quote["quoteId"]})
    assert expired.status_code == 410 and expired.json()["error"]["code"] == "quote_expired"
    reservation = api.post(R, tokens["charge"], json={"featureKey": "voice-call", "items": stt_items("100"),
                                                      "quoteId": quote["quoteId"], "idempotencyKey": "q"})
    assert reservation.status_code == 410 and reservation.json()["error"]["code"] == "quote_expired"


def test_quote_expiry_defaults_to_fifteen_minutes_and_can_be_shorter(api, tokens, clock):
    from datetime import datetime, timedelta

    quote = api.post("/api/billing/quote", tokens["any"], json={"items": stt_items()}).json()["quote"]
    expires = datetime.fromisoformat(quote["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(minutes=14) < expires - datetime.now(expires.tzinfo) <= timedelta(minutes=15)
    short = api.post("/api/billing/quote", tokens["any"], json={"items": stt_items(), "ttlSeconds": 1}).json()["quote"]
    clock.advance(1.2)
    top_up(api, tokens["admin"], "1")
    late = api.post("/api/billing/charge", tokens["charge"], json={
        "featureKey": "f", "items": stt_items("100"), "quoteId": short["quoteId"]})
    assert late.status_code == 410


def test_another_tenants_quote_is_not_found(api, tokens, make_token):
    other = f"t-{uuid.uuid4().hex[:12]}"
    theirs = api.post("/api/billing/quote", make_token(other), json={"items": stt_items()}).json()["quote"]
    top_up(api, tokens["admin"], "1")
    response = api.post("/api/billing/charge", tokens["charge"], json={
        "featureKey": "f", "items": stt_items("100"), "quoteId": theirs["quoteId"]})
    assert response.status_code == 404 and response.json()["error"]["details"]["field"] == "quoteId"
    assert wallet(api, tokens["any"])["currentBalance"] == "1"
    assert Decimal(theirs["totalCost"]) == 1


def test_a_charge_made_before_its_hold_expired_settles_it_late(api, tokens, tenant, engine, clock):
    """The hold expired (and was released) between the charge's acceptance and its settlement."""
    from billing_core.db import UnitOfWork
    from billing_core.usage import events
    from billing_core.usage.commands import ChargeRequest

    top_up(api, tokens["admin"], "10")
    hold = reserve(api, tokens["charge"], "3").json()["reservation"]
    with UnitOfWork(engine) as uow:  # accepted, but no worker told yet
        outcome = events.accept_charge(uow, tenant, ChargeRequest(
            featureKey="voice-call", items=stt_items("20000"), reservationId=hold["id"]), user_id="t")
    from billing_core.ledger import expiry

    # the hold runs out just after the charge was made, and the expiry job ends it before it sees the
    # charge (as when it runs while the acceptance has not committed yet): the charge is hidden from it
    with engine.begin() as connection:
        connection.execute(text("UPDATE reservations SET expires_at = :at + interval '1 microsecond' "
                                "WHERE id = :id"), {"at": outcome.event.created_at, "id": hold["id"]})
        connection.execute(text("UPDATE usage_events SET status = 'rejected' WHERE id = :id"),
                           {"id": outcome.event.id})
    with UnitOfWork(engine) as uow:
        assert expiry.expire_due(uow, tenant) == 1
    with engine.begin() as connection:
        connection.execute(text("UPDATE usage_events SET status = 'pending' WHERE id = :id"),
                           {"id": outcome.event.id})
    assert api.get(f"{R}/{hold['id']}", tokens["view"]).json()["reservation"]["status"] == "expired"
    assert sweep_pending_charges(clock) >= 1  # the pending sweep hands it to a worker

    def handled() -> dict | None:
        task = api.get(f"/api/billing/tasks/{outcome.event.task_id}", tokens["view"]).json()["task"]
        return task if task["state"] != "pending" else None

    task = eventually(handled, timeout=30, what="the swept charge handled")
    assert task["state"] == "charged", task
    settled = api.get(f"{R}/{hold['id']}", tokens["view"]).json()["reservation"]
    assert (settled["status"], settled["settledAmount"]) == ("settled", "2")
    w = wallet(api, tokens["any"])
    assert (w["currentBalance"], w["reservedBalance"]) == ("8", "0")


def test_a_hold_made_from_a_quote_is_settled_at_the_quotes_prices(api, tokens, tenant, engine):
    top_up(api, tokens["admin"], "100")
    quote = api.post("/api/billing/quote", tokens["any"], json={"items": stt_items("10000")}).json()["quote"]
    hold = api.post(R, tokens["charge"], json={"featureKey": "voice-call", "items": stt_items("10000"),
                                               "quoteId": quote["quoteId"], "idempotencyKey": "q"}).json()
    _override(api, tokens["admin"], tenant, "0.0003")
    with engine.begin() as connection:  # the quote itself runs out; the hold it priced has not
        connection.execute(text("UPDATE quotes SET expires_at = now() - interval '1 second' WHERE id = :q"),
                           {"q": quote["quoteId"]})
    settled = settle(api, tokens["charge"], hold["reservation"]["id"], "20000")
    assert settled.status_code == 200, settled.text
    assert settled.json()["usageEvent"]["totalCost"] == "2"  # 0.0001 as quoted, not 0.0003


def test_put_pricing_again_changes_nothing(api, tokens, tenant):
    body = {"category": "tts", "provider": "openai", "model": "tts-1", "unit": "character", "unitPrice": "0.00002",
            "tenantId": tenant}
    first = api.request("PUT", "/api/billing/pricing", tokens["admin"], json=body).json()["price"]
    again = api.request("PUT", "/api/billing/pricing", tokens["admin"], json=body)
    assert again.status_code == 200 and again.json()["price"] == first
