"""Operator lists default to the token's tenant (CONTRACT.md): GET /auto-topups without tenantId answers
the token's own tenant, even for billing.admin; every tenant's rows only with allTenants=true (billing.admin);
billing.manage reads its own tenant's attempts and never another's."""
from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import func, insert

from billing_core.payments.tables import auto_topup_attempts


def _attempt(engine, tenant_id: str) -> str:
    """A finished (failed) attempt, written directly: no Stripe and no worker involved."""
    attempt_id = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(insert(auto_topup_attempts).values(
            tenant_id=tenant_id, id=attempt_id, status="failed", amount=Decimal("40"),
            available_before=Decimal("5"), threshold=Decimal("10"), month=func.current_date(),
            failure_code="card_declined", failure_message="declined", stripe_requests=1, next_try_at=func.now(),
            created_at=func.now(), updated_at=func.now(), finished_at=func.now()))
    return str(attempt_id)


def _ids(response) -> set[str]:
    assert response.status_code == 200, response.text
    return {a["id"] for a in response.json()["autoTopups"]}


def test_auto_topups_default_to_the_tokens_tenant_and_list_every_tenant_only_when_asked(
        api, engine, tenant, make_token):
    other = f"{tenant}-b"
    own, theirs = _attempt(engine, tenant), _attempt(engine, other)
    admin = make_token(tenant, "billing.admin")

    assert _ids(api.get("/api/billing/auto-topups", admin)) == {own}  # not every tenant's
    assert _ids(api.get(f"/api/billing/auto-topups?tenantId={other}", admin)) == {theirs}
    everyone = _ids(api.get("/api/billing/auto-topups?allTenants=true&status=failed&limit=500", admin))
    assert {own, theirs} <= everyone
    assert api.get(f"/api/billing/auto-topups?allTenants=true&tenantId={other}", admin).status_code == 400

    manage = make_token(tenant, "billing.manage")
    assert _ids(api.get("/api/billing/auto-topups", manage)) == {own}
    assert _ids(api.get(f"/api/billing/auto-topups?tenantId={tenant}", manage)) == {own}
    assert api.get(f"/api/billing/auto-topups?tenantId={other}", manage).status_code == 403
    assert api.get("/api/billing/auto-topups?allTenants=true", manage).status_code == 403

    assert api.get("/api/billing/auto-topups", make_token(tenant, "billing.view")).status_code == 403
    assert api.get("/api/billing/auto-topups", make_token(tenant, "billing.charge")).status_code == 403
