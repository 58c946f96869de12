"""Bearer JWT verification and capability checks. The tenant comes from the verified token only."""
from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

import jwt
from flask import current_app, g, request

from billing_core import logs
from billing_core.bootstrap import Settings
from web.errors import ApiError

log = logs.get(__name__)

TENANT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # always fullmatch: "$" would let a trailing newline in
ADMIN, VIEW, CHARGE = "billing.admin", "billing.view", "billing.charge"
# a tenant's own administrators: everything billing.view allows plus that tenant's own settings
MANAGE = "billing.manage"
# what each capability includes besides itself (billing.admin includes everything)
INCLUDED = {MANAGE: frozenset({VIEW})}
DEFAULT_MAX_LIFETIME_SECONDS = 30 * 24 * 3600
MIN_HMAC_SECRET_BYTES = 32


@dataclass(frozen=True)
class TokenSettings:
    secret: str | None
    public_key: str | None
    issuer: str | None
    audience: str | None
    max_lifetime_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS

    @property
    def algorithm(self) -> str:
        return "RS256" if self.public_key else "HS256"

    @classmethod
    def of(cls, settings: Settings) -> TokenSettings:
        production = settings.production
        secret, public_key = settings.jwt_secret, settings.jwt_public_key
        if not secret and not public_key:
            if production:
                raise RuntimeError("LAD_ENV=production needs JWT_SECRET or JWT_PUBLIC_KEY")
            secret = secrets.token_urlsafe(32)  # development only; `make run` passes one in
        issuer, audience = settings.jwt_issuer, settings.jwt_audience
        max_lifetime = settings.jwt_max_lifetime_seconds
        if production:
            # a token minted for another LAD service with the same key must not work here
            if not audience:
                raise RuntimeError("LAD_ENV=production needs JWT_AUDIENCE (every token must carry it)")
            if not public_key and len((secret or "").encode()) < MIN_HMAC_SECRET_BYTES:
                raise RuntimeError(f"LAD_ENV=production needs a JWT_SECRET of at least {MIN_HMAC_SECRET_BYTES} bytes")
            if not issuer:
                log.warning("JWT_ISSUER is not set: tokens of any issuer holding the key are accepted")
        return cls(secret, public_key, issuer, audience, max_lifetime)


@dataclass(frozen=True)
class Principal:
    subject: str
    tenant_id: str
    capabilities: frozenset[str]

    def has(self, capability: str) -> bool:
        return ADMIN in self.capabilities or capability in self.capabilities or any(
            capability in INCLUDED.get(held, ()) for held in self.capabilities)


def verify_token(token: str, settings: TokenSettings) -> Principal:
    key = settings.public_key or settings.secret or ""  # of() always sets one of them
    try:
        claims = jwt.decode(
            token, key, algorithms=[settings.algorithm],
            issuer=settings.issuer, audience=settings.audience,
            options={"require": ["exp", "sub"], "verify_aud": settings.audience is not None},
        )
    except jwt.PyJWTError as exc:
        raise ApiError("unauthorized", f"invalid token: {exc}") from exc
    tenant_id, capabilities, subject = claims.get("tenantId"), claims.get("capabilities", []), claims.get("sub")
    if not isinstance(tenant_id, str) or not TENANT_ID.fullmatch(tenant_id):
        raise ApiError("unauthorized", "token has no valid tenantId claim")
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise ApiError("unauthorized", "token capabilities must be a list of strings")
    if not isinstance(subject, str) or not subject:
        raise ApiError("unauthorized", "token has no valid sub claim")
    _check_lifetime(claims, settings.max_lifetime_seconds)
    return Principal(subject, tenant_id, frozenset(capabilities))


def _check_lifetime(claims: dict, max_lifetime: int) -> None:
    """A leaked token must not work for ever: exp may be at most max_lifetime after iat (or now)."""
    expires, issued = claims["exp"], claims.get("iat")
    if not isinstance(expires, (int, float)) or (issued is not None and not isinstance(issued, (int, float))):
        raise ApiError("unauthorized", "invalid token: exp and iat must be numbers")
    if expires - time.time() > max_lifetime or (issued is not None and expires - issued > max_lifetime):
        raise ApiError("unauthorized", f"invalid token: lifetime over {max_lifetime} seconds")


def authenticate(capability: str | None = None) -> Principal:
    """The caller of this request; 401 without a valid token, 403 without `capability`."""
    principal = g.get("lad_principal")
    if principal is None:  # verified once per request (the rate limiter asks first)
        principal = verify_token(bearer_token(), current_app.extensions["lad_tokens"])
        g.lad_principal = principal
    if capability is not None and not principal.has(capability):
        raise ApiError("forbidden", f"this operation needs the {capability} capability",
                       {"capability": capability})
    return principal


def bearer_token() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError("unauthorized", "a bearer token is required")
    return token.strip()


def managed_tenant(requested: str | None) -> tuple[Principal, str]:
    """The one check for a tenant's own settings (alerts, budgets, auto top-up, portal sessions):
    a billing.manage token acts on its own tenant only (naming another is 403), a billing.admin
    token on any tenant it names. 401 without a token, 403 without either capability."""
    principal = authenticate(MANAGE)
    return principal, tenant_for(principal, requested)


def tenant_for(principal: Principal, requested: str | None) -> str:
    """The tenant an operation acts on: the token's, any tenant named by a billing.admin token, or
    one of its own sub-accounts named by an agency's token. Inside an agency's tree any other name
    is not found (404): a sub-account cannot tell its agency or a sibling exists."""
    if requested is None or requested == principal.tenant_id:
        return principal.tenant_id
    if ADMIN in principal.capabilities:
        return requested
    from billing_core.agencies import tree
    from web.runtime import unit_of_work

    with unit_of_work() as uow:
        if tree.agency_of(uow, requested) == principal.tenant_id:
            return requested
        in_tree = tree.is_agency(uow, principal.tenant_id) or tree.find_sub_account(uow, principal.tenant_id)
    if in_tree:
        raise ApiError("not_found", f"tenant {requested} not found", {"field": "tenantId"})
    raise ApiError("forbidden", "only a billing.admin token may name another tenant", {"field": "tenantId"})


def issue_token(settings: TokenSettings, *, tenant_id: str, capabilities: list[str], subject: str = "dev",
                ttl_seconds: int = DEFAULT_MAX_LIFETIME_SECONDS, private_key: str | None = None) -> str:
    """A token for development and tests (HS256 with the configured secret, or RS256 with a key)."""
    claims = {"sub": subject, "tenantId": tenant_id, "capabilities": capabilities,
              "iat": int(time.time()), "exp": int(time.time()) + ttl_seconds}
    if settings.issuer:
        claims["iss"] = settings.issuer
    if settings.audience:
        claims["aud"] = settings.audience
    if private_key:
        return jwt.encode(claims, private_key, algorithm="RS256")
    assert settings.secret, "HS256 tokens need JWT_SECRET"
    return jwt.encode(claims, settings.secret, algorithm="HS256")
