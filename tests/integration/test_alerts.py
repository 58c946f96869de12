"""When low-balance alerts fire, billing_core against the real database: once per crossing of a threshold
(at or below it), re-armed above it, through holds and between two evaluations; evaluations and scans at
once fire each crossing once."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from billing_core.db import UnitOfWork
from billing_core.lifecycle.commands import ReleaseReservationRequest, ReservationRequest
from billing_core.lifecycle.holds import release, reserve
from billing_core.notifications import alerts
from tests.support.notifications import configure, evaluate, fired, fund, spend, states


def test_fires_at_or_below_the_threshold_and_depleted_at_zero(engine, tenant, sink):
    fund(engine, tenant, "10")
    configure(engine, tenant, ["5", "0"], webhookUrl=sink.url)
    spend(engine, tenant, "4.9999")  # 5.0001: above 5, nothing fires
    evaluate(engine, tenant)
    assert fired(engine, tenant) == []
    spend(engine, tenant, "0.0001")  # exactly 5: at the threshold fires
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "5")]
    spend(engine, tenant, "4.9999")  # 0.0001 left: not depleted yet
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "5")]
    spend(engine, tenant, "0.0001")  # exactly 0: depleted
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "5"), ("balance.depleted", "0", "0")]
    assert states(engine, tenant) == {"5": False, "0": False}
    assert evaluate(engine, tenant) == []  # nothing new: nothing fires again


def test_rearms_above_the_threshold_even_between_two_evaluations_and_counts_holds(engine, tenant, sink):
    fund(engine, tenant, "10")
    configure(engine, tenant, ["5"], webhookUrl=sink.url)
    spend(engine, tenant, "6")  # 4
    evaluate(engine, tenant)
    assert len(fired(engine, tenant)) == 1
    # back above 5 and down again with no evaluation in between: the ledger shows both
    fund(engine, tenant, "10")  # 14
    spend(engine, tenant, "10")  # 4
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "4"), ("balance.low", "5", "4")]
    # a hold lowers the available balance: it crosses like a charge, and its release re-arms
    fund(engine, tenant, "10")  # 14
    evaluate(engine, tenant)
    assert states(engine, tenant) == {"5": True}
    with UnitOfWork(engine) as uow:
        hold = reserve(uow, tenant, ReservationRequest(featureKey="voice-agent", amount="9.5",
                                                       idempotencyKey=str(uuid.uuid4())), created_by="test")
    evaluate(engine, tenant)
    assert fired(engine, tenant)[-1] == ("balance.low", "5", "4.5")
    with UnitOfWork(engine) as uow:
        release(uow, tenant, hold.hold.id, ReleaseReservationRequest(), created_by="test")
    evaluate(engine, tenant)
    assert states(engine, tenant) == {"5": True}
    assert len(fired(engine, tenant)) == 3


def test_new_thresholds_start_armed_and_removed_ones_are_forgotten(engine, tenant, sink):
    fund(engine, tenant, "3")
    configure(engine, tenant, ["5"], webhookUrl=sink.url)  # already below: fires once
    evaluate(engine, tenant)
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "3")]
    configure(engine, tenant, ["5", "4"], webhookUrl=sink.url)  # 5 keeps its state, 4 is new
    evaluate(engine, tenant)
    assert fired(engine, tenant) == [("balance.low", "5", "3"), ("balance.low", "4", "3")]
    configure(engine, tenant, ["4"], webhookUrl=sink.url)
    assert states(engine, tenant) == {"4": False}


def test_no_channel_no_settings_nothing_enqueued(engine, tenant):
    assert evaluate(engine, tenant) == []  # no settings at all
    configure(engine, tenant, ["5"])  # thresholds without a webhook or e-mail: states move, nothing is sent
    evaluate(engine, tenant)
    assert states(engine, tenant) == {"5": False}
    assert fired(engine, tenant) == []


def test_evaluations_and_scans_running_at_once_fire_each_crossing_once(engine, sink):
    tenants = [f"t-alert-race-{uuid.uuid4().hex[:10]}" for _ in range(12)]
    for tenant in tenants:
        fund(engine, tenant, "10")
        configure(engine, tenant, ["8", "5", "0"], webhookUrl=sink.url)
        spend(engine, tenant, "6")  # 4: crosses 8 and 5
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def run(job: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            job()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    jobs = [lambda: alerts.scan(lambda: UnitOfWork(engine), page_size=5) for _ in range(4)]
    jobs += [lambda: [evaluate(engine, t) for t in tenants] for _ in range(4)]
    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for tenant in tenants:
        assert sorted(fired(engine, tenant)) == [("balance.low", "5", "4"), ("balance.low", "8", "4")]
