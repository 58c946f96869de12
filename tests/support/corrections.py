"""In-process helpers for the corrections tests (late usage, void and amend, re-rates): a tenant with
money, charges accepted and settled at once, the clock moved to a day of the next month."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from tests.support.pricing import TIERS

D = Decimal


def new_tenant() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def fund(engine: Any, tenant: str, amount: str = "100000") -> None:
    from billing_core.db import UnitOfWork
    from billing_core.ledger import credits
    from billing_core.ledger.commands import TopUpRequest

    with UnitOfWork(engine) as uow:
        credits.top_up(uow, tenant, TopUpRequest(amount=amount, idempotencyKey=f"fund-{uuid.uuid4()}"),
                       created_by="test")


def set_global_price(engine: Any, key: tuple[str, str, str, str], *, unit_price: str | None = None,
                     tiers: list[dict[str, Any]] | None = None) -> None:
    """A global price for `key` from now (unit, or graduated with `tiers`)."""
    from billing_core.catalog import put_price
    from billing_core.catalog.models import terms_from_request
    from billing_core.db import UnitOfWork

    terms = terms_from_request("graduated" if tiers else "unit", unit_price=unit_price, package_size=None,
                               package_price=None, minimum_quantity=None, tiers=tiers)
    with UnitOfWork(engine) as uow:
        put_price(uow, tenant_id=None, key=key, terms=terms, effective_from=None, description=None)


def charge(engine: Any, tenant: str, key: tuple[str, str, str, str], quantity: str, *,
           occurred_at: datetime | None = None, feature: str = "calls", idempotency_key: str | None = None):
    """Accept one charge and settle the tenant's pending events; answers the event as it stands."""
    from billing_core.db import UnitOfWork
    from billing_core.usage import events
    from billing_core.usage.charging import charge_pending_batch
    from billing_core.usage.commands import ChargeRequest

    category, provider, model, unit = key
    with UnitOfWork(engine) as uow:
        accepted = events.accept_charge(uow, tenant, ChargeRequest(
            featureKey=feature, idempotencyKey=idempotency_key or f"k-{uuid.uuid4()}", occurredAt=occurred_at,
            items=[{"category": category, "provider": provider, "model": model, "unit": unit,
                    "quantity": quantity}]), user_id="test")
    with UnitOfWork(engine) as uow:
        charge_pending_batch(uow, tenant, limit=100)
    with UnitOfWork(engine) as uow:
        return events.load_outcome(uow, tenant, accepted.event.id, with_items=True)


def to_next_month(clock: Any, day: int = 2) -> datetime:
    """Move the database clock to noon of `day` of the month after the one it shows; answers it."""
    now = clock.now()
    first = (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + timedelta(days=32)).replace(day=1)
    target = first + timedelta(days=day - 1, hours=12)
    clock.advance((target - now).total_seconds())
    return clock.now()


def tier_position(engine: Any, tenant: str, key: tuple[str, str, str, str], month: datetime) -> Decimal:
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT coalesce(max(billed_quantity), 0) FROM tier_positions WHERE tenant_id = :t AND category = :c "
            "AND provider = :p AND model = :m AND unit = :u AND period_start = :s"),
            {"t": tenant, "c": key[0], "p": key[1], "m": key[2], "u": key[3], "s": month}).scalar_one()


def budget_spent(engine: Any, tenant: str, feature: str, month: datetime) -> Decimal:
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT coalesce(max(spent), 0) FROM budget_spend WHERE tenant_id = :t AND feature_key = :f "
            "AND period = 'month' AND period_start = :s"), {"t": tenant, "f": feature, "s": month}).scalar_one()


def invoice_lines(engine: Any, tenant: str, period_first_day: Any) -> list[Any]:
    with engine.connect() as connection:
        return connection.execute(text(
            "SELECT l.line_type, l.prior_period, l.exact_amount, l.quantity FROM invoice_lines l "
            "JOIN invoices i ON i.id = l.invoice_id WHERE i.tenant_id = :t AND i.period = :p ORDER BY l.line_no"),
            {"t": tenant, "p": period_first_day}).all()


__all__ = ["D", "TIERS"]
