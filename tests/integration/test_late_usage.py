"""Late usage (issue 20): a charge's occurredAt prices, budgets and invoices it at its occurrence."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests.support.corrections import (
    TIERS,
    D,
    budget_spent,
    charge,
    fund,
    invoice_lines,
    new_tenant,
    set_global_price,
    tier_position,
    to_next_month,
)
from tests.support.pricing import at_once, new_item


def _key() -> tuple[str, str, str, str]:
    item = new_item()
    return (item["category"], item["provider"], item["model"], item["unit"])


def test_usage_of_last_month_prices_budgets_and_invoices_at_its_occurrence(engine, clock):
    from billing_core.catalog.positions import month_of
    from billing_core.db import UnitOfWork
    from billing_core.invoicing import invoices
    from billing_core.invoicing.invoices import Period
    from billing_core.lifecycle.budgets import set_budget

    tenant, key = new_tenant(), _key()
    set_global_price(engine, key, tiers=TIERS)  # last month's price: graduated
    fund(engine, tenant)
    with UnitOfWork(engine) as uow:
        set_budget(uow, tenant, "calls", spend_limit=D("100000"), period="month", action="alert")
    start = clock.now()
    last_month = month_of(start)
    first = charge(engine, tenant, key, "900")
    assert first.event.total_cost == at_once(D(900))

    now = to_next_month(clock)
    this_month = month_of(now)
    set_global_price(engine, key, unit_price="1")  # this month's price
    late = charge(engine, tenant, key, "200", occurred_at=start + timedelta(seconds=1))
    assert late.event.status == "charged"
    assert late.event.occurred_at == start + timedelta(seconds=1)
    # last month's price from where last month's tiers stood: the pieces are the month priced at once
    assert late.event.total_cost == at_once(D(1100)) - at_once(D(900))
    assert tier_position(engine, tenant, key, last_month) == D(1100)
    assert tier_position(engine, tenant, key, this_month) == D(0)
    assert budget_spent(engine, tenant, "calls", last_month) == at_once(D(1100))
    on_time = charge(engine, tenant, key, "3")
    assert on_time.event.total_cost == D(3)
    assert budget_spent(engine, tenant, "calls", this_month) == D(3)

    # last month is finalized: a record of it arriving now lands on this month's invoice as prior-period
    with UnitOfWork(engine) as uow:
        assert len(invoices.rollup(uow, Period.containing(start), tenant_id=tenant).created) == 1
    closed = charge(engine, tenant, key, "100", occurred_at=start + timedelta(seconds=2))
    assert closed.event.total_cost == at_once(D(1200)) - at_once(D(1100))
    last_lines = invoice_lines(engine, tenant, Period.containing(start).first_day)
    assert sum(line.exact_amount for line in last_lines if line.line_type == "usage") == at_once(D(900))

    to_next_month(clock)
    with UnitOfWork(engine) as uow:
        assert len(invoices.rollup(uow, Period.containing(now), tenant_id=tenant).created) == 1
    lines = [line for line in invoice_lines(engine, tenant, Period.containing(now).first_day)
             if line.line_type == "usage"]
    prior = sum((line.exact_amount for line in lines if line.prior_period), D(0))
    assert prior == late.event.total_cost + closed.event.total_cost
    assert sum((line.exact_amount for line in lines if not line.prior_period), D(0)) == D(3)


def test_future_and_too_old_occurred_at_are_refused_naming_the_field(engine, clock):
    from billing_core.catalog import set_price
    from billing_core.db import UnitOfWork
    from billing_core.errors import ValidationFailed
    from billing_core.usage import events
    from billing_core.usage.commands import ChargeRequest

    tenant, key = new_tenant(), _key()
    with UnitOfWork(engine) as uow:  # a price since long ago
        set_price(uow, tenant_id=None, key=key, unit_price=D("0.5"))
        uow.commit()
    fund(engine, tenant)
    now = clock.now()
    item = dict(zip(("category", "provider", "model", "unit"), key, strict=True))

    def accept(at, max_days=35):  # noqa: ANN001, ANN202
        with UnitOfWork(engine) as uow:
            return events.accept_charge(uow, tenant, ChargeRequest(
                featureKey="calls", occurredAt=at, items=[{**item, "quantity": "1"}]), user_id="test",
                late_usage_max_days=max_days)

    for refused, max_days in ((now + timedelta(minutes=10), 35), (now - timedelta(days=36), 35),
                              (now - timedelta(days=3), 2)):
        with pytest.raises(ValidationFailed) as raised:
            accept(refused, max_days)
        assert raised.value.details["field"] == "occurredAt"
    # a clock a little ahead is not the future; one a month behind is late, not too late
    assert accept(now + timedelta(minutes=2)).event.occurred_at <= clock.now()
    assert accept(now - timedelta(days=30)).event.occurred_at == now - timedelta(days=30)
    with UnitOfWork(engine) as uow:
        acceptances = events.accept_charges(uow, tenant, [ChargeRequest(
            featureKey="calls", occurredAt=now + timedelta(days=1), items=[{**item, "quantity": "1"}])],
            user_id="test")
    assert acceptances[0].error is not None and acceptances[0].error.details["field"] == "occurredAt"
