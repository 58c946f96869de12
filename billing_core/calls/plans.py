"""A tenant's call plan: how many calls may run at once (and per feature), burst slots above that at a
price multiple, how far a settlement may take the balance below zero, and whether it may at all
(`strict`). Set by the operator; no row means no limits and the default policy (`grace`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from billing_core.calls.commands import PLAN_FIELDS, CallPlanRequest
from billing_core.calls.tables import call_plans
from billing_core.db import UnitOfWork
from billing_core.errors import ValidationFailed
from billing_core.ledger.wallets import get_wallet

GRACE, STRICT = "grace", "strict"


@dataclass(frozen=True)
class CallPlan:
    max_concurrent_calls: int | None = None
    burst_limit: int | None = None
    burst_multiplier: Decimal = Decimal(1)
    call_grace_limit: Decimal | None = None
    settlement_policy: str = GRACE
    feature_limits: dict[str, int] = field(default_factory=dict)

    @property
    def ceiling(self) -> int | None:
        """The most calls that may run at once, burst slots included (None: unlimited)."""
        if self.max_concurrent_calls is None:
            return None
        return max(self.max_concurrent_calls, self.burst_limit or 0)

    @property
    def settles_in_full(self) -> bool:
        """Under `grace` an admitted call is charged in full, into debt if need be."""
        return self.settlement_policy == GRACE


def load_plan(connection: Connection, tenant_id: str) -> CallPlan:
    row = connection.execute(select(call_plans).where(call_plans.c.tenant_id == tenant_id)).one_or_none()
    return CallPlan() if row is None else plan_from_row(row)


def plan_from_row(row: Any) -> CallPlan:
    return CallPlan(row.max_concurrent_calls, row.burst_limit, row.burst_multiplier, row.call_grace_limit,
                    row.settlement_policy, dict(row.feature_limits))


def set_plan(uow: UnitOfWork, tenant_id: str, command: CallPlanRequest) -> CallPlan:
    """Change the fields given (under the wallet's lock, so no hold is admitted halfway through the
    change) and commit. A burst limit below the base limit is refused. Lowering a limit ends no call:
    calls already running stay admitted, new ones wait for slots."""
    given = command.model_fields_set & PLAN_FIELDS
    get_wallet(uow, tenant_id, lock=True)
    plan = load_plan(uow.connection, tenant_id)
    base = command.maxConcurrentCalls if "maxConcurrentCalls" in given else plan.max_concurrent_calls
    burst = command.burstLimit if "burstLimit" in given else plan.burst_limit
    if burst is not None and base is None:
        raise ValidationFailed("burstLimit", "a burst limit needs maxConcurrentCalls")
    if burst is not None and base is not None and burst < base:
        raise ValidationFailed("burstLimit", "must be at least maxConcurrentCalls")
    values: dict[str, object] = {
        "max_concurrent_calls": base,
        "burst_limit": burst,
        "burst_multiplier": (command.burstMultiplier or Decimal(1)) if "burstMultiplier" in given
        else plan.burst_multiplier,
        "call_grace_limit": command.callGraceLimit if "callGraceLimit" in given else plan.call_grace_limit,
        "settlement_policy": (command.settlementPolicy or GRACE) if "settlementPolicy" in given
        else plan.settlement_policy,
    }
    limits = dict(plan.feature_limits)
    for feature_key, limit in (command.featureLimits or {}).items():
        if limit is None:
            limits.pop(feature_key, None)
        else:
            limits[feature_key] = limit
    now = uow.now()  # the transaction's time as a parameter: no now() in DO UPDATE SET (Citus)
    uow.connection.execute(
        insert(call_plans)
        .values(tenant_id=tenant_id, feature_limits=limits, created_at=now, updated_at=now, **values)
        .on_conflict_do_update(index_elements=[call_plans.c.tenant_id],
                               set_={**values, "feature_limits": limits, "updated_at": now}))
    changed = load_plan(uow.connection, tenant_id)
    uow.commit()
    return changed
