"""Rate limits per tenant and per token (Flask-Limiter, counted in Redis), by capability. A tenant
whose available balance is at or below zero gets a much lower limit on charge and reservation
attempts, so a depleted tenant's retry loop cannot load the service. If Redis is down, requests are
not limited rather than refused: charges must still be accepted then."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from flask import current_app, request
from flask_limiter import Limiter
from sqlalchemy import text

from billing_core.config import Settings
from billing_core.db import engine_for

from .auth import ADMIN, CHARGE, VIEW, authenticate, bearer_token

LIMIT_SETTING = {CHARGE: "rate_limit_charge", VIEW: "rate_limit_view", ADMIN: "rate_limit_admin"}


def _settings() -> Settings:
    return current_app.config["LAD_SETTINGS"]


def _acting_tenant() -> str:
    """The tenant a request acts for: the token's, or the `tenantId` a billing.admin token names (an
    operator acting for a tenant is limited, and judged depleted, as that tenant)."""
    principal = authenticate()
    if ADMIN not in principal.capabilities:
        return principal.tenant_id
    named = request.args.get("tenantId")
    if named is None and request.is_json:
        body = request.get_json(silent=True)
        named = body.get("tenantId") if isinstance(body, dict) else None
    return named if isinstance(named, str) and named else principal.tenant_id


def _tenant_key() -> str:
    return f"tenant:{_acting_tenant()}"


def _token_key() -> str:
    return "token:" + hashlib.sha256(bearer_token().encode()).hexdigest()[:32]


limiter = Limiter(key_func=_tenant_key, headers_enabled=True, swallow_errors=True, key_prefix="lad-billing",
                  strategy="moving-window")


def init_limiter(app: Any) -> None:
    settings: Settings = app.config["LAD_SETTINGS"]
    app.config.setdefault("RATELIMIT_STORAGE_URI", settings.redis_url)
    app.config.setdefault("RATELIMIT_STORAGE_OPTIONS", {"socket_connect_timeout": 1, "socket_timeout": 1})
    app.config.setdefault("RATELIMIT_KEY_PREFIX", f"{settings.queue}:ratelimit")
    limiter.init_app(app)


def _depleted() -> bool:
    """Available balance at or below zero (no wallet yet counts as zero): one indexed read."""
    available = engine_for(_settings().database_url).connect().execution_options(
        isolation_level="AUTOCOMMIT")
    try:
        value = available.execute(text(
            "SELECT current_balance - reserved_balance FROM wallets WHERE tenant_id = :t"),
            {"t": _acting_tenant()}).scalar_one_or_none()
    finally:
        available.close()
    return value is None or value <= 0


def rate_limited(capability: str, *, depleted_limit: bool = False) -> Callable:
    """Limit a route by the caller's tenant and token at the capability's configured rate."""
    def value() -> str:
        return getattr(_settings(), LIMIT_SETTING[capability])

    def decorate(view: Callable) -> Callable:
        view = limiter.shared_limit(value, scope=f"{capability}:tenant", key_func=_tenant_key)(view)
        view = limiter.shared_limit(value, scope=f"{capability}:token", key_func=_token_key)(view)
        if depleted_limit:
            view = limiter.shared_limit(lambda: _settings().rate_limit_depleted, scope="depleted",
                                        key_func=_tenant_key, exempt_when=lambda: not _depleted())(view)
        return view

    return decorate
