"""Re-rate a period after a price fix (issue 20): a wrong price for three days across 3 tenants and
2,000 events; the dry run's differences equal the posted ones to the cent; a run that dies mid-way and
is resumed posts each tenant's difference exactly once; a second run posts nothing; tenants outside the
filter are untouched."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from sqlalchemy import text

from tests.support.corrections import D, fund, new_tenant
from tests.support.pricing import new_item

DAY = 24 * 3600


def _terms(unit_price: str):  # noqa: ANN202
    from billing_core.catalog.models import terms_from_request

    return terms_from_request("unit", unit_price=unit_price, package_size=None, package_price=None,
                              minimum_quantity=None, tiers=None)


def _put(engine, key, unit_price, **extra):  # noqa: ANN001, ANN003, ANN202
    from billing_core.catalog import put_price
    from billing_core.db import UnitOfWork

    with UnitOfWork(engine) as uow:
        return put_price(uow, tenant_id=None, key=key, terms=_terms(unit_price), description=None, **extra)


def _charge_many(engine, tenant, key, count, quantity="10") -> None:  # noqa: ANN001
    from billing_core.db import UnitOfWork
    from billing_core.usage import events
    from billing_core.usage.charging import charge_pending_batch
    from billing_core.usage.commands import ChargeRequest

    item = dict(zip(("category", "provider", "model", "unit"), key, strict=True))
    with UnitOfWork(engine) as uow:
        accepted = events.accept_charges(uow, tenant, [ChargeRequest(
            featureKey="calls", idempotencyKey=f"k-{uuid.uuid4()}", items=[{**item, "quantity": quantity}])
            for _ in range(count)], user_id="test")
    assert all(a.error is None for a in accepted)
    while True:
        with UnitOfWork(engine) as uow:
            if not charge_pending_batch(uow, tenant, limit=500):
                break


def _balance(engine, tenant) -> Decimal:  # noqa: ANN001
    with engine.connect() as connection:
        return connection.execute(text("SELECT current_balance FROM wallets WHERE tenant_id = :t"),
                                  {"t": tenant}).scalar_one()


def _corrections(engine, tenant) -> list:  # noqa: ANN001
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT amount, reference FROM ledger_entries WHERE tenant_id = :t AND entry_type = 'correction'"),
            {"t": tenant}).all()


def test_a_wrong_price_for_three_days_is_re_rated_once_per_tenant(engine, clock):
    from billing_core.corrections import rerates
    from billing_core.db import UnitOfWork
    from billing_core.errors import ValidationFailed
    from billing_core.ledger.verification import verify

    item, other = new_item(), new_item()
    key = (item["category"], item["provider"], item["model"], item["unit"])
    other_key = (other["category"], other["provider"], other["model"], other["unit"])
    _put(engine, key, "0.001", effective_from=None)
    _put(engine, other_key, "0.001", effective_from=None)
    tenants, outsider = [new_tenant() for _ in range(3)], new_tenant()
    for tenant in [*tenants, outsider]:
        fund(engine, tenant, "1000")
    clock.advance(DAY)
    wrong = _put(engine, key, "0.002", effective_from=None)  # entered wrong: twice the price
    _put(engine, other_key, "0.002", effective_from=None)  # the outsider's item: not in the filter
    start = wrong.effective_from
    counts = {tenants[0]: 700, tenants[1]: 650, tenants[2]: 650}  # 2,000 events over three days
    for _day in range(3):
        for tenant, count in counts.items():
            _charge_many(engine, tenant, key, count // 3 + (1 if _day < count % 3 else 0))
        _charge_many(engine, outsider, other_key, 5)
        clock.advance(DAY)
    end = clock.now()
    before = {tenant: _balance(engine, tenant) for tenant in [*tenants, outsider]}
    outsider_balance = _balance(engine, outsider)

    with pytest.raises(ValidationFailed) as refused:  # a past start is a correction, with its reason
        _put(engine, key, "0.001", effective_from=start)
    assert refused.value.details["field"] == "effectiveFrom"
    _put(engine, key, "0.001", effective_from=start, correction_reason="entered at twice the price")

    scope = rerates.RerateScope(start, end, category=key[0], model=key[2])
    with UnitOfWork(engine) as uow:
        dry = rerates.dry_run(uow, scope)
    by_tenant = {t.tenant_id: t for t in dry.tenants}
    assert set(by_tenant) == set(tenants)  # the outsider's events are outside the filter
    for tenant, count in counts.items():
        assert (by_tenant[tenant].events, by_tenant[tenant].difference) == (count, D(count) * D("0.01"))
    assert {t: _balance(engine, t) for t in before} == before  # a dry run writes nothing

    with UnitOfWork(engine) as uow:
        run = rerates.start_run(uow, scope, f"rr-{uuid.uuid4()}", requested_by="test")
    # a worker dies mid-way: the first tenant is posted, the second's transaction never commits
    first, second = sorted(tenants)[:2]
    with UnitOfWork(engine) as uow:
        rerates.apply_tenant(uow, run.id, scope, first)

    class Died(Exception):
        pass

    def dies() -> None:
        raise Died

    with UnitOfWork(engine) as uow, pytest.raises(Died):
        uow.commit = dies
        rerates.apply_tenant(uow, run.id, scope, second)
    assert _corrections(engine, second) == []
    # the redelivered task resumes: the tenants not posted yet, each once
    assert rerates.run(lambda: UnitOfWork(engine), run.id) == "completed"
    assert rerates.run(lambda: UnitOfWork(engine), run.id) == "completed"  # a duplicate delivery: nothing
    for tenant, count in counts.items():
        posted = _corrections(engine, tenant)
        assert [(amount, reference) for amount, reference in posted] == [(D(count) * D("0.01"), f"rerate:{run.id}")]
        assert _balance(engine, tenant) == before[tenant] + by_tenant[tenant].difference
    with UnitOfWork(engine) as uow:
        done = rerates.get_run(uow, run.id)
    assert {t.tenant_id: t.difference for t in done.tenants} == {t: by_tenant[t].difference for t in tenants}
    assert _balance(engine, outsider) == outsider_balance and _corrections(engine, outsider) == []
    with UnitOfWork(engine) as uow:
        for tenant in [*tenants, outsider]:
            assert verify(uow, tenant).ok

    # the same range and catalog again: every difference is 0, nothing is posted
    with UnitOfWork(engine) as uow:
        again = rerates.start_run(uow, scope, f"rr-{uuid.uuid4()}", requested_by="test")
    assert rerates.run(lambda: UnitOfWork(engine), again.id) == "completed"
    with UnitOfWork(engine) as uow:
        second_run = rerates.get_run(uow, again.id)
    assert {t.difference for t in second_run.tenants} == {D(0)}
    assert all(len(_corrections(engine, tenant)) == 1 for tenant in tenants)
