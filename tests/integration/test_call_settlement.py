"""Calls against real PostgreSQL, in-process: an admitted call settles past its hold and the balance
into debt (grace), and what the wallet then refuses."""
from __future__ import annotations

import uuid
from decimal import Decimal

from billing_core.db import UnitOfWork
from billing_core.ledger.commands import TopUpRequest
from billing_core.ledger.credits import top_up
from billing_core.lifecycle import holds
from billing_core.lifecycle.commands import ReservationRequest
from billing_core.usage import charging, events
from billing_core.usage.commands import ChargeRequest
from tests.support.helpers import stt_items
from tests.support.notifications import configure


def test_a_settlement_past_the_balance_goes_into_debt(engine, tenant):
    with UnitOfWork(engine) as uow:
        top_up(uow, tenant, TopUpRequest(amount="1", idempotencyKey=str(uuid.uuid4())), created_by="test")
    configure(engine, tenant, ["0.5"], webhookUrl="https://example.invalid/hook")
    with UnitOfWork(engine) as uow:
        hold = holds.reserve(uow, tenant, ReservationRequest(featureKey="f", amount="0.5", idempotencyKey="h"),
                             created_by="t").hold
    command = ChargeRequest.model_validate({"featureKey": "f", "idempotencyKey": "c", "items": stt_items("20000"),
                                            "reservationId": str(hold.id)})
    with UnitOfWork(engine) as uow:
        event = events.accept_charge(uow, tenant, command, user_id="test").event
    with UnitOfWork(engine) as uow:
        outcome = charging.charge_usage_event(uow, tenant, event.id)
    assert outcome.event.status == "charged", outcome
    assert outcome.debit.balance_after == Decimal("-1")
