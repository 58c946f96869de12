"""Corrections as a property (issue 20): for random charges with random occurredAt, voids, amends and a
re-rate after a catalog correction, each tenant's net charged equals its month priced from scratch with
the corrected catalog and the corrected items, the month's tier position is the corrected quantities,
and the ledger verifies."""
from __future__ import annotations

import uuid
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.support.corrections import D, fund, tier_position
from tests.support.pricing import TIERS, at_once, new_item

CORRECTED_TIERS = [{"upTo": "500", "unitPrice": "0.02"}, {"upTo": "3000", "unitPrice": "0.004"},
                   {"upTo": None, "unitPrice": "0.0005"}]

charges = st.tuples(st.just("charge"), st.decimals(min_value=1, max_value=2000, places=1),
                    st.floats(min_value=0, max_value=1))
voids = st.tuples(st.just("void"), st.integers(min_value=0, max_value=20), st.just(0.0))
amends = st.tuples(st.just("amend"), st.integers(min_value=0, max_value=20),
                   st.decimals(min_value=1, max_value=2000, places=1))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.lists(st.one_of(charges, charges, voids, amends), min_size=1, max_size=10))
def test_net_charged_is_the_month_priced_from_scratch_after_corrections(engine, steps):
    from billing_core.catalog import put_price, set_price
    from billing_core.catalog.models import terms_from_request
    from billing_core.catalog.positions import month_of
    from billing_core.corrections import rerates
    from billing_core.corrections.commands import CorrectionRequest
    from billing_core.corrections.events import correct_usage_event
    from billing_core.db import UnitOfWork
    from billing_core.errors import ValidationFailed
    from billing_core.ledger.verification import verify
    from billing_core.usage import events
    from billing_core.usage.charging import charge_pending_batch
    from billing_core.usage.commands import ChargeRequest

    def terms(tiers):  # noqa: ANN001, ANN202
        return terms_from_request("graduated", unit_price=None, package_size=None, package_price=None,
                                  minimum_quantity=None, tiers=tiers)

    tenant = f"prop-{uuid.uuid4().hex[:12]}"
    item = new_item()
    key = (item["category"], item["provider"], item["model"], item["unit"])
    with UnitOfWork(engine) as uow:
        set_price(uow, tenant_id=None, key=key, terms=terms(TIERS))
        uow.commit()
    fund(engine, tenant, "1000000")
    with UnitOfWork(engine) as uow:
        now = uow.now()
    month = month_of(now)
    span = (now - month).total_seconds()
    accepted: list[uuid.UUID] = []
    quantities: dict[uuid.UUID, D] = {}
    voided: set[uuid.UUID] = set()
    for index, (action, first, second) in enumerate(steps):
        if action == "charge":
            occurred = now - timedelta(seconds=span * second)
            with UnitOfWork(engine) as uow:
                outcome = events.accept_charge(uow, tenant, ChargeRequest(
                    featureKey="calls", idempotencyKey=f"k-{index}", occurredAt=occurred,
                    items=[{**item, "quantity": str(first)}]), user_id="prop")
            with UnitOfWork(engine) as uow:
                charge_pending_batch(uow, tenant, limit=50)
            accepted.append(outcome.event.id)
            quantities[outcome.event.id] = D(first)
            continue
        if not accepted:
            continue
        event_id = accepted[first % len(accepted)]
        command = CorrectionRequest(action=action, reason="prop", idempotencyKey=f"c-{index}",
                                    items=[{**item, "quantity": str(second)}] if action == "amend" else None)
        try:
            with UnitOfWork(engine) as uow:
                correct_usage_event(uow, tenant, event_id, command, created_by="prop")
        except ValidationFailed:
            assert action == "amend" and event_id in voided  # a voided event is not amended
            continue
        if action == "void":
            voided.add(event_id)
        else:
            quantities[event_id] = D(second)

    kept = sum((q for e, q in quantities.items() if e not in voided), D(0))

    def net_charged() -> D:
        with engine.connect() as connection:
            return -connection.execute(text(
                "SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE tenant_id = :t "
                "AND entry_type IN ('debit', 'correction')"), {"t": tenant}).scalar_one()

    # voids and amends keep the month's pieces equal to the whole month priced at once
    assert net_charged() == at_once(kept)

    # the catalog corrected from the start of the month, and the month re-rated
    with UnitOfWork(engine) as uow:
        put_price(uow, tenant_id=None, key=key, terms=terms(CORRECTED_TIERS), effective_from=month,
                  description=None, correction_reason="prop")
    scope = rerates.RerateScope(month, now + timedelta(seconds=1), tenant_id=tenant)
    with UnitOfWork(engine) as uow:
        run = rerates.start_run(uow, scope, f"rr-{uuid.uuid4()}", requested_by="prop")
    assert rerates.run(lambda: UnitOfWork(engine), run.id) == "completed"

    assert net_charged() == at_once(kept, CORRECTED_TIERS)
    assert tier_position(engine, tenant, key, month) == kept
    with UnitOfWork(engine) as uow:
        assert verify(uow, tenant).ok
