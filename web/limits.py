"""Rate limits, counted in Redis, in the buckets of the principal that acts.

A request counts only once it is authenticated (and, for routes of billing.admin, billing.manage and
billing.charge, once its token holds that capability), and in the buckets of the principal that acts:
the token's own tenant and the token itself, at the route's capability's rate. An operator's token
counts in its own tenant's bucket, never in that of a tenant it names, so no tenant can use up the
operator's requests for it (issue 25). Requests refused with 401 or 403 count in no such bucket (one
refused inside the route is given back): they go to smaller buckets of their own, per token and per
source address, so a flood of refusals is itself limited (429) without touching anyone's ordinary
budget. The pages count in the same buckets: a portal session in its tenant's (reads at the
billing.view rate, forms at billing.manage's), a console session in its own.

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
from dataclasses import dataclass, field
from typing import Any

import limits
import redis
from flask import Flask, Response, current_app, g, request

from billing_core import logs
from billing_core.access.sessions import PageSession
from billing_core.bootstrap import Settings
from billing_core.ledger import wallets
from billing_core.redis_clients import redis_from_url
from web.auth import ADMIN, CHARGE, MANAGE, VIEW, Principal, authenticate
from web.errors import ApiError
from web.runtime import runtime, settings

log = logs.get(__name__)

LIMIT_SETTING = {CHARGE: "rate_limit_charge", VIEW: "rate_limit_view", MANAGE: "rate_limit_admin",
                 ADMIN: "rate_limit_admin"}
# routes limited as these capabilities need them: a token without it is refused before it counts. A
# billing.view route may also serve billing.charge or any token; its handler decides (and a refusal
# there is given back).
REQUIRED = frozenset({ADMIN, MANAGE, CHARGE})
REFUSALS = frozenset({"unauthorized", "forbidden"})

# KEYS: one counter prefix per limit. ARGV: weight, then (amount, window seconds) per limit.
# Returns {allowed, limit, remaining, reset seconds, counted keys...} of the tightest limit (the refusing
# one, if any). The window index comes from Redis' own clock, so every web process agrees on it; the
# counter keys are derived from KEYS[i] (one Redis, not a cluster).
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
local answer = {1, best_limit, best_remaining or 0, best_reset}
for i = 1, #current_keys do
  redis.call('INCRBY', current_keys[i][1], weight)
  redis.call('EXPIRE', current_keys[i][1], current_keys[i][2] * 2 + 1)
  answer[4 + i] = current_keys[i][1]
end
return answer
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    weight: int = 1
    counted: tuple[str, ...] = field(default=())  # the counters this request was added to


def init_limiter(app: Flask) -> None:
    settings: Settings = app.config["LAD_SETTINGS"]
    client = redis_from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    app.extensions["lad_rate_limit_redis"] = client
    app.extensions["lad_rate_limits"] = client.register_script(SLIDING_WINDOWS)
    app.extensions["lad_rate_limit_prefix"] = f"{settings.queue}:ratelimit"
    app.after_request(_limit_headers)


def _depleted(tenant_id: str) -> bool:
    """Available balance at or below zero (no wallet yet counts as zero): one indexed read."""
    connection = runtime().engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        return wallets.available_at_or_below_zero(connection, tenant_id)
    finally:
        connection.close()


@functools.cache
def _rate(notation: str) -> limits.RateLimitItem:
    return limits.parse(notation)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


def _count(counted: list[tuple[str, limits.RateLimitItem]], weight: int = 1) -> Verdict | None:
    """Check and count one request against every limit given, in one Redis round trip; None when Redis
    does not answer (not limited)."""
    prefix = current_app.extensions["lad_rate_limit_prefix"]
    arguments: list[Any] = [weight]
    for _, item in counted:
        arguments += [item.amount, item.get_expiry()]
    try:
        allowed, limit, remaining, reset, *keys = current_app.extensions["lad_rate_limits"](
            keys=[f"{prefix}:{key}" for key, _ in counted], args=arguments)
    except redis.RedisError as exc:
        log.warning("rate limits not counted: redis unavailable", error=str(exc))
        return None
    return Verdict(bool(allowed), int(limit), int(remaining), max(int(reset), 1), weight,
                   tuple(k.decode() if isinstance(k, bytes) else k for k in keys))


def _give_back(verdict: Verdict) -> None:
    """Take a request that was refused after all out of the counters it was added to."""
    try:
        with current_app.extensions["lad_rate_limit_redis"].pipeline(transaction=False) as pipe:
            for key in verdict.counted:
                pipe.decrby(key, verdict.weight)
            pipe.execute()
    except redis.RedisError as exc:
        log.warning("a refused request stays counted: redis unavailable", error=str(exc))


def _principal_buckets(principal: Principal, capability: str) -> list[tuple[str, limits.RateLimitItem]]:
    rate = _rate(getattr(settings(), LIMIT_SETTING[capability]))
    return [(f"{capability}:tenant:{principal.tenant_id}", rate),
            (f"{capability}:token:{_digest(_presented_token() or '')}", rate)]


def check_limits(principal: Principal, capability: str, *, depleted_limit: bool = False,
                 weight: int = 1) -> Verdict | None:
    """Check and count an authenticated request in its principal's buckets (see the module)."""
    counted = _principal_buckets(principal, capability)
    # a depleted tenant's own reservations; an operator is not a depleted tenant, whatever it names
    if depleted_limit and ADMIN not in principal.capabilities and _depleted(principal.tenant_id):
        counted.append((f"depleted:tenant:{principal.tenant_id}", _rate(settings().rate_limit_depleted)))
    return _count(counted, weight)


def count_refusal(token: str | None) -> None:
    """Count a request refused with 401 or 403 (in its token's and its source address's refusal
    buckets); raises rate_limited when either is full."""
    rates = settings()
    counted = [(f"refused:address:{request.remote_addr or 'unknown'}", _rate(rates.rate_limit_refused_address))]
    if token:
        counted.append((f"refused:token:{_digest(token)}", _rate(rates.rate_limit_refused)))
    _enforce(_count(counted))


def check_page_limits(session: PageSession, writing: bool) -> None:
    """A page request of a live session, counted as the API counts its principal: a portal session in its
    tenant's buckets (reads at the billing.view rate, forms at billing.manage's) and its own, a console
    session (an operator) in its own at the billing.admin rate. Raises rate_limited when one is full."""
    if session.tenant_id is None:
        counted = [(f"{ADMIN}:console:{session.id}", _rate(settings().rate_limit_admin))]
    else:
        capability = MANAGE if writing else VIEW
        rate = _rate(getattr(settings(), LIMIT_SETTING[capability]))
        counted = [(f"{capability}:tenant:{session.tenant_id}", rate), (f"{capability}:page:{session.id}", rate)]
    _enforce(_count(counted))


def _enforce(verdict: Verdict | None) -> None:
    if verdict is None:
        return
    g.lad_rate_limit = verdict
    if not verdict.allowed:
        raise ApiError("rate_limited", f"rate limit exceeded ({verdict.limit} per window); retry later",
                       {"retryAfterSeconds": verdict.reset_seconds})


def _presented_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def rate_limited(capability: str, *, depleted_limit: bool = False,
                 weight: Callable[[], int] | None = None) -> Callable:
    """Limit a route at the capability's configured rate, in the buckets of the authenticated principal
    (its tenant and its token); with `depleted_limit` (reservations only) a depleted tenant also gets
    RATE_LIMIT_DEPLETED; `weight` says how many the request counts as (a batch: its events). 401 and
    403 count in the refusal buckets only."""
    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def limited(*args: Any, **kwargs: Any) -> Any:
            try:
                principal = authenticate(capability if capability in REQUIRED else None)
            except ApiError as refused:
                if refused.code in REFUSALS:
                    count_refusal(_presented_token())
                raise
            verdict = check_limits(principal, capability, depleted_limit=depleted_limit,
                                   weight=weight() if weight else 1)
            _enforce(verdict)
            try:
                return view(*args, **kwargs)
            except ApiError as refused:
                if refused.code in REFUSALS:
                    if verdict is not None:
                        _give_back(verdict)
                    count_refusal(_presented_token())
                raise

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
