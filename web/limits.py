"""Rate limits per tenant and per token, by capability, counted in Redis.

Every limit of a request (the tenant's, the token's, and for a depleted tenant's reservations the
depleted limit) is checked and counted in ONE Redis round trip: one Lua script over sliding-window
counters (this window's count plus the previous window's, weighted by the part of it still inside
the sliding window). A profile had a third of a web worker's time under `GET /wallet` in the
moving-window scripts of Flask-Limiter, one round trip per limit plus one for the headers.

A request counts as its weight: a `POST /charges` batch as its number of events. A refused request
counts nothing. A charge is never refused for a low or depleted balance (usage that already happened
is always recorded); the depleted limit applies to reservations only. If Redis is down, requests are
not limited rather than refused: charges must still be accepted then.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import limits
import redis
from flask import Flask, Response, current_app, g, request
from sqlalchemy import text

from billing_core import logs
from billing_core.config import Settings
from billing_core.db import engine_for

from .auth import ADMIN, CHARGE, MANAGE, VIEW, authenticate, bearer_token
from .errors import ApiError

log = logs.get(__name__)

LIMIT_SETTING = {CHARGE: "rate_limit_charge", VIEW: "rate_limit_view", MANAGE: "rate_limit_admin",
                 ADMIN: "rate_limit_admin"}

# KEYS: one counter prefix per limit. ARGV: weight, then (amount, window seconds) per limit.
# Returns {allowed, limit, remaining, reset seconds} of the tightest limit (the refusing one, if any).
# The window index comes from Redis' own clock, so every web process agrees on it; the counter keys
# are derived from KEYS[i] (one Redis, not a cluster).
SLIDING_WINDOWS = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local weight = tonumber(ARGV[1])
local best_remaining, best_limit, best_reset = nil, 0, 0
local current_keys = {}
for i = 1, #KEYS do
  local amount, window = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local index = math.floor(t / window)
  local into = (t - index * window) / window
  local current_key = KEYS[i] .. ':' .. index
  local current = tonumber(redis.call('GET', current_key) or '0')
  local previous = tonumber(redis.call('GET', KEYS[i] .. ':' .. (index - 1)) or '0')
  local used = math.floor(previous * (1 - into) + current)
  local remaining = amount - used - weight
  local reset = math.ceil((1 - into) * window)
  if remaining < 0 then
    return {0, amount, 0, reset}
  end
  if best_remaining == nil or remaining < best_remaining then
    best_remaining, best_limit, best_reset = remaining, amount, reset
  end
  current_keys[i] = {current_key, window}
end
for i = 1, #current_keys do
  redis.call('INCRBY', current_keys[i][1], weight)
  redis.call('EXPIRE', current_keys[i][1], current_keys[i][2] * 2 + 1)
end
return {1, best_limit, best_remaining or 0, best_reset}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int


def _settings() -> Settings:
    return current_app.config["LAD_SETTINGS"]


def init_limiter(app: Flask) -> None:
    settings: Settings = app.config["LAD_SETTINGS"]
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    app.extensions["lad_rate_limits"] = client.register_script(SLIDING_WINDOWS)
    app.extensions["lad_rate_limit_prefix"] = f"{settings.queue}:ratelimit"
    app.after_request(_limit_headers)


def _acting_tenant() -> str:
    """The tenant a request acts for: the token's, or the `tenantId` a billing.admin token names (an
    operator acting for a tenant is limited, and judged depleted, as that tenant)."""
    principal = authenticate()
    if ADMIN not in principal.capabilities:
        return principal.tenant_id
    named = request.args.get("tenantId")
    if named is None and request.is_json:
        body = g.get("lad_json_body") or request.get_json(silent=True)
        named = body.get("tenantId") if isinstance(body, dict) else None
    return named if isinstance(named, str) and named else principal.tenant_id


def _depleted(tenant_id: str) -> bool:
    """Available balance at or below zero (no wallet yet counts as zero): one indexed read."""
    available = engine_for(_settings().database_url).connect().execution_options(
        isolation_level="AUTOCOMMIT")
    try:
        value = available.execute(text(
            "SELECT current_balance - reserved_balance FROM wallets WHERE tenant_id = :t"),
            {"t": tenant_id}).scalar_one_or_none()
    finally:
        available.close()
    return value is None or value <= 0


@functools.cache
def _rate(notation: str) -> limits.RateLimitItem:
    return limits.parse(notation)


def check_limits(capability: str, *, depleted_limit: bool = False, weight: int = 1) -> Verdict | None:
    """Check and count this request against every limit that applies, in one Redis round trip;
    None when Redis does not answer (not limited)."""
    tenant_id = _acting_tenant()
    token = hashlib.sha256(bearer_token().encode()).hexdigest()[:32]
    prefix = current_app.extensions["lad_rate_limit_prefix"]
    rate = _rate(getattr(_settings(), LIMIT_SETTING[capability]))
    counted = [(f"{prefix}:{capability}:tenant:{tenant_id}", rate), (f"{prefix}:{capability}:token:{token}", rate)]
    if depleted_limit and _depleted(tenant_id):
        counted.append((f"{prefix}:depleted:tenant:{tenant_id}", _rate(_settings().rate_limit_depleted)))
    arguments: list[Any] = [weight]
    for _, item in counted:
        arguments += [item.amount, item.get_expiry()]
    try:
        allowed, limit, remaining, reset = current_app.extensions["lad_rate_limits"](
            keys=[key for key, _ in counted], args=arguments)
    except redis.RedisError as exc:
        log.warning("rate limits not counted: redis unavailable", error=str(exc))
        return None
    return Verdict(bool(allowed), int(limit), int(remaining), max(int(reset), 1))


def rate_limited(capability: str, *, depleted_limit: bool = False,
                 weight: Callable[[], int] | None = None) -> Callable:
    """Limit a route by the caller's tenant and token at the capability's configured rate; with
    `depleted_limit` (reservations only) a depleted tenant also gets RATE_LIMIT_DEPLETED; `weight`
    says how many the request counts as (a batch: its events)."""
    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def limited(*args: Any, **kwargs: Any) -> Any:
            verdict = check_limits(capability, depleted_limit=depleted_limit, weight=weight() if weight else 1)
            if verdict is not None:
                g.lad_rate_limit = verdict
                if not verdict.allowed:
                    raise ApiError("rate_limited", f"rate limit exceeded ({verdict.limit} per window); retry later",
                                   {"retryAfterSeconds": verdict.reset_seconds})
            return view(*args, **kwargs)

        return limited

    return decorate


def _limit_headers(response: Response) -> Response:
    verdict: Verdict | None = g.get("lad_rate_limit")
    if verdict is not None:
        response.headers["X-RateLimit-Limit"] = str(verdict.limit)
        response.headers["X-RateLimit-Remaining"] = str(max(verdict.remaining, 0))
        response.headers["X-RateLimit-Reset"] = str(verdict.reset_seconds)
        if not verdict.allowed:
            response.headers["Retry-After"] = str(verdict.reset_seconds)
    return response

