"""Graduated pricing against the real database, in-process: a month's charges add up to the price of its total."""
from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.support.pricing import TIERS, D, at_once, new_item


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(st.lists(st.tuples(st.decimals(min_value=0, max_value=3000, places=2), st.booleans()),
                min_size=1, max_size=8),
       st.integers(min_value=1, max_value=5))
def test_graduated_charges_in_a_month_add_up_to_the_price_of_the_total(engine, make_token, steps, group):
    """In-process on the real database: charges accepted, then settled in groups of `group` (group
    commit), some refunded along the way. The sum of the charged costs equals the graduated price of
    the month's total at once, refunds or not (costs stay as charged)."""
    from billing_core.catalog import Terms, put_price
    from billing_core.catalog.models import terms_from_request
    from billing_core.db import UnitOfWork
    from billing_core.ledger import credits
    from billing_core.ledger.commands import RefundRequest, TopUpRequest
    from billing_core.ledger.wallets import debit_for_event
    from billing_core.usage import events
    from billing_core.usage.charging import charge_pending_batch
    from billing_core.usage.commands import ChargeRequest

    tenant = f"p-{uuid.uuid4().hex[:12]}"
    item = new_item()
    key = (item["category"], item["provider"], item["model"], item["unit"])
    with UnitOfWork(engine) as uow:
        terms: Terms = terms_from_request("graduated", unit_price=None, package_size=None, package_price=None,
                                          minimum_quantity=None, tiers=TIERS)
        put_price(uow, tenant_id=tenant, key=key, terms=terms, effective_from=None, description=None)
    with UnitOfWork(engine) as uow:
        credits.top_up(uow, tenant, TopUpRequest(amount="100000", idempotencyKey="fund"), created_by="prop")
    accepted = []
    for index, (quantity, refund_it) in enumerate(steps):
        with UnitOfWork(engine) as uow:
            outcome = events.accept_charge(uow, tenant, ChargeRequest(
                featureKey="calls", idempotencyKey=f"k-{index}", items=[{**item, "quantity": str(quantity)}]),
                user_id="prop")
        accepted.append((outcome.event.id, refund_it))
        if index % group == group - 1:
            with UnitOfWork(engine) as uow:
                charge_pending_batch(uow, tenant, limit=group)
    while True:
        with UnitOfWork(engine) as uow:
            if not charge_pending_batch(uow, tenant, limit=group):
                break
    for event_id, refund_it in accepted:
        if refund_it:
            with UnitOfWork(engine) as uow:
                debit = debit_for_event(uow, tenant, event_id)
            if debit is not None and debit.amount != 0:
                with UnitOfWork(engine) as uow:
                    credits.refund(uow, tenant, RefundRequest(transactionId=debit.id, reason="prop",
                                                              idempotencyKey=f"r-{event_id}"), created_by="prop")
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT status, total_cost FROM usage_events WHERE tenant_id = :t"), {"t": tenant}).all()
    assert {r.status for r in rows} == {"charged"}
    total = sum((q for q, _ in steps), D(0))
    assert sum((r.total_cost for r in rows), D(0)) == at_once(total)
    # a later charge continues from the whole month, refunds notwithstanding
    with UnitOfWork(engine) as uow:
        outcome = events.accept_charge(uow, tenant, ChargeRequest(
            featureKey="calls", idempotencyKey="last", items=[{**item, "quantity": "1"}]), user_id="prop")
    with UnitOfWork(engine) as uow:
        charge_pending_batch(uow, tenant, limit=10)
    with engine.connect() as connection:
        last = connection.execute(text("SELECT total_cost FROM usage_events WHERE tenant_id = :t AND id = :id"),
                                  {"t": tenant, "id": outcome.event.id}).scalar_one()
    assert last == at_once(total + 1) - at_once(total)
