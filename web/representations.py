"""Domain objects as JSON: amounts as normalized decimal strings, times as ISO 8601 UTC."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from billing_core import money
from billing_core.catalog import Adjustment, Price, PricedItem, ProviderCost
from billing_core.catalog.items import line_breakdown
from billing_core.catalog.models import UNIT, tiers_to_json
from billing_core.ledger.model import Grant, Hold, LedgerEntry, Wallet
from billing_core.ledger.verification import Verification
from billing_core.lifecycle.budgets import BudgetStatus
from billing_core.usage.events import Acceptance, ChargeOutcome, UsageEvent, UsageItemRecord
from billing_core.usage.history import Summary


def timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def amount(value: Any) -> str | None:
    return None if value is None else money.format_decimal(value)


def price(p: Price) -> dict[str, Any]:
    body = {
        "category": p.category, "provider": p.provider, "model": p.model, "unit": p.unit,
        "unitPrice": amount(p.unit_price), "currency": p.currency, "description": p.description,
        "scope": "tenant" if p.tenant_id else "global",
        "effectiveFrom": timestamp(p.effective_from), "effectiveTo": timestamp(p.effective_to),
        "pricingModel": p.pricing_model,
    }
    terms = p.terms
    for name, value in (("packageSize", terms.package_size), ("packagePrice", terms.package_price),
                        ("minimumQuantity", terms.minimum_quantity), ("multiplier", p.multiplier)):
        if value is not None:
            body[name] = amount(value)
    if terms.tiers:
        body["tiers"] = tiers_to_json(terms.tiers)
    return body


def quote_line(p: PricedItem) -> dict[str, Any]:
    breakdown = p.breakdown()
    return {
        "category": p.item.category, "provider": p.item.provider, "model": p.item.model, "unit": p.item.unit,
        "quantity": amount(p.item.quantity), "unitPrice": amount(p.price.unit_price), "totalCost": amount(p.cost),
        **line_breakdown(p.price.pricing_model, p.billed_quantity, breakdown["parts"] if breakdown else []),
    }


def adjustment(a: Adjustment) -> dict[str, Any]:
    return {"id": str(a.id), "tenantId": a.tenant_id, "multiplier": amount(a.multiplier), "category": a.category,
            "provider": a.provider, "model": a.model, "unit": a.unit, "effectiveFrom": timestamp(a.effective_from),
            "effectiveTo": timestamp(a.effective_to)}


def provider_cost(c: ProviderCost) -> dict[str, Any]:
    return {"id": str(c.id), "category": c.category, "provider": c.provider, "model": c.model, "unit": c.unit,
            "unitCost": amount(c.unit_cost), "currency": c.currency, "effectiveFrom": timestamp(c.effective_from),
            "effectiveTo": timestamp(c.effective_to)}


def wallet(w: Wallet, grants: list[Grant] | None = None) -> dict[str, Any]:
    body = {
        "id": str(w.id), "tenantId": w.tenant_id, "currentBalance": amount(w.current_balance),
        "reservedBalance": amount(w.reserved_balance), "availableBalance": amount(w.available_balance),
        "overdraftLimit": amount(w.overdraft_limit), "currency": w.currency, "status": w.status,
        "flagged": w.flagged_at is not None, "flagReason": w.flag_reason,
    }
    if grants is not None:
        body["grants"] = [grant(g) for g in grants]
    return body


def grant(g: Grant) -> dict[str, Any]:
    return {"id": str(g.id), "kind": g.kind, "amount": amount(g.amount), "remaining": amount(g.remaining),
            "priority": g.priority, "expiresAt": timestamp(g.expires_at), "source": g.source,
            "createdAt": timestamp(g.created_at)}


def _id(value: Any) -> str | None:
    return None if value is None else str(value)


def transaction(e: LedgerEntry) -> dict[str, Any]:
    return {
        "id": str(e.id), "type": e.entry_type, "amount": amount(e.amount),
        "balanceBefore": amount(e.balance_before), "balanceAfter": amount(e.balance_after),
        "reservedChange": amount(e.reserved_change),
        "description": e.description, "usageEventId": _id(e.usage_event_id),
        "reservationId": _id(e.reservation_id), "grantId": _id(e.grant_id),
        "relatedTransactionId": _id(e.related_entry_id), "createdAt": timestamp(e.created_at),
    }


def reservation(r: Hold) -> dict[str, Any]:
    return {"id": str(r.id), "status": r.status, "amount": amount(r.amount),
            "settledAmount": amount(r.settled_amount), "featureKey": r.feature_key,
            "externalReferenceId": r.external_reference_id, "quoteId": _id(r.quote_id),
            "usageEventId": _id(r.usage_event_id), "expiresAt": timestamp(r.expires_at),
            "createdAt": timestamp(r.created_at), "closedAt": timestamp(r.closed_at)}


def budget(b: BudgetStatus) -> dict[str, Any]:
    return {"featureKey": b.budget.feature_key, "limit": amount(b.budget.spend_limit), "period": b.budget.period,
            "action": b.budget.action, "periodStart": timestamp(b.period_start), "spent": amount(b.spent),
            "held": amount(b.held), "remaining": amount(b.remaining)}


def usage_event(e: UsageEvent) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(e.id), "featureKey": e.feature_key, "status": e.status, "totalCost": amount(e.total_cost),
        "currency": e.currency, "externalReferenceId": e.external_reference_id,
        "createdAt": timestamp(e.created_at), "chargedAt": timestamp(e.charged_at),
    }
    if e.rejection_code:
        body["rejection"] = rejection(e)
    return body


def rejection(e: UsageEvent) -> dict[str, Any]:
    return {"code": e.rejection_code, "message": e.rejection_reason, "details": e.rejection_details or {}}


def usage_item(i: UsageItemRecord) -> dict[str, Any]:
    """A charged item as the tenant sees it: what it paid and why (never the provider's cost)."""
    pricing = i.pricing or {}
    billed = money.to_decimal(pricing["billedQuantity"]) if "billedQuantity" in pricing else i.quantity
    return {
        "category": i.category, "provider": i.provider, "model": i.model, "unit": i.unit,
        "quantity": amount(i.quantity), "unitPrice": amount(i.unit_price), "totalCost": amount(i.cost),
        **line_breakdown(pricing.get("pricingModel", UNIT), billed, pricing.get("parts", [])),
    }


def usage_event_detail(outcome: ChargeOutcome) -> dict[str, Any]:
    body = usage_event(outcome.event)
    body.update(metadata=outcome.event.metadata, items=[usage_item(i) for i in outcome.items],
                taskId=str(outcome.event.task_id),
                transactionId=str(outcome.debit.id) if outcome.debit else None)
    return body


def summary(s: Summary) -> dict[str, Any]:
    def buckets(by: dict[str, tuple[int, Any]]) -> dict[str, Any]:
        return {name: {"events": count, "cost": amount(cost)} for name, (count, cost) in sorted(by.items())}

    return {"totalEvents": s.total_events, "totalCost": amount(s.total_cost),
            "byFeature": buckets(s.by_feature), "byStatus": buckets(s.by_status)}


def task(outcome: ChargeOutcome) -> dict[str, Any]:
    body: dict[str, Any] = {"id": str(outcome.event.task_id), "state": outcome.event.status,
                            "usageEvent": usage_event(outcome.event)}
    if outcome.debit is not None:
        body["transaction"] = transaction(outcome.debit)
    if outcome.event.rejection_code:
        body["error"] = rejection(outcome.event)
    return body


def batch_result(index: int, a: Acceptance) -> dict[str, Any]:
    if a.error is not None:
        return {"index": index, "status": "error", "taskId": None, "usageEventId": None,
                "error": {"code": a.error.code, "message": a.error.message, "details": a.error.details}}
    assert a.event is not None
    return {"index": index, "status": "replayed" if a.replayed else "accepted", "taskId": str(a.event.task_id),
            "usageEventId": str(a.event.id), "error": None}


def verification(v: Verification) -> dict[str, Any]:
    return {"ok": v.ok, "walletsChecked": v.wallets_checked, "mismatches": v.mismatches}
