"""Bearer JWT verification and capability checks. The tenant comes from the verified token only."""
from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass

import jwt
from flask import current_app, g, request

from .errors import ApiError

TENANT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
ADMIN, VIEW, CHARGE = "billing.admin", "billing.view", "billing.charge"
MANAGE = "billing.manage"  # a tenant's own administrators (portal sessions for itself)


@dataclass(frozen=True)
class TokenSettings:
    secret: str | None
    public_key: str | None
    issuer: str | None
    audience: str | None

    @property
    def algorithm(self) -> str:
        return "RS256" if self.public_key else "HS256"

    @classmethod
    def from_env(cls) -> TokenSettings:
        production = os.environ.get("LAD_ENV", "development") == "production"
        secret = os.environ.get("JWT_SECRET") or None
        public_key = os.environ.get("JWT_PUBLIC_KEY") or None
        if not secret and not public_key:
            if production:
                raise RuntimeError("LAD_ENV=production needs JWT_SECRET or JWT_PUBLIC_KEY")
            secret = secrets.token_urlsafe(32)  # development only; `make run` passes one in
        return cls(secret, public_key, os.environ.get("JWT_ISSUER") or None, os.environ.get("JWT_AUDIENCE") or None)


@dataclass(frozen=True)
class Principal:
    subject: str
    tenant_id: str
    capabilities: frozenset[str]

    def has(self, capability: str) -> bool:
        return ADMIN in self.capabilities or capability in self.capabilities


def verify_token(token: str, settings: TokenSettings) -> Principal:
    key = settings.public_key or settings.secret
    try:
        claims = jwt.decode(
            token, key, algorithms=[settings.algorithm],
            issuer=settings.issuer, audience=settings.audience,
            options={"require": ["exp"], "verify_aud": settings.audience is not None},
        )
    except jwt.PyJWTError as exc:
        raise ApiError("unauthorized", f"invalid token: {exc}") from exc
    tenant_id, capabilities, subject = claims.get("tenantId"), claims.get("capabilities", []), claims.get("sub")
    if not isinstance(tenant_id, str) or not TENANT_ID.match(tenant_id):
        raise ApiError("unauthorized", "token has no valid tenantId claim")
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise ApiError("unauthorized", "token capabilities must be a list of strings")
    return Principal(str(subject) if subject is not None else "", tenant_id, frozenset(capabilities))


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


def tenant_for(principal: Principal, requested: str | None) -> str:
    """The tenant an operation acts on: the token's, or any tenant named by a billing.admin token."""
    if requested is None or requested == principal.tenant_id:
        return principal.tenant_id
    if ADMIN not in principal.capabilities:
        raise ApiError("forbidden", "only a billing.admin token may name another tenant", {"field": "tenantId"})
    return requested


def issue_token(settings: TokenSettings, *, tenant_id: str, capabilities: list[str], subject: str = "dev",
                ttl_seconds: int = 30 * 24 * 3600, private_key: str | None = None) -> str:
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
