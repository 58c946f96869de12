"""Tokens meant for billing, checked without a server: audience, issuer, lifetime, sub, secret length, RS256."""
from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.tokens import claims
from web.auth import TokenSettings, issue_token, verify_token
from web.errors import ApiError


def test_production_refuses_to_start_without_an_audience_or_with_a_short_secret(monkeypatch):
    from billing_core.bootstrap import Settings
    from web.auth import TokenSettings

    monkeypatch.setenv("LAD_ENV", "production")
    monkeypatch.delenv("JWT_PUBLIC_KEY", raising=False)
    monkeypatch.setenv("JWT_SECRET", "x" * 40)
    monkeypatch.delenv("JWT_AUDIENCE", raising=False)
    with pytest.raises(RuntimeError, match="JWT_AUDIENCE"):
        TokenSettings.of(Settings())
    monkeypatch.setenv("JWT_AUDIENCE", "lad-billing")
    monkeypatch.setenv("JWT_SECRET", "abc")
    with pytest.raises(RuntimeError, match="32 bytes"):
        TokenSettings.of(Settings())
    monkeypatch.setenv("JWT_SECRET", "x" * 32)
    settings = TokenSettings.of(Settings())
    assert settings.audience == "lad-billing" and settings.max_lifetime_seconds == 30 * 24 * 3600


def test_tokens_for_another_audience_too_long_lived_or_without_sub_are_refused():
    from web.auth import TokenSettings, issue_token, verify_token
    from web.errors import ApiError

    settings = TokenSettings("s" * 32, None, "lad", "lad-billing", max_lifetime_seconds=3600)
    good = issue_token(settings, tenant_id="acme", capabilities=[], ttl_seconds=3600)
    assert verify_token(good, settings).tenant_id == "acme"
    now = int(time.time())
    claims = {"sub": "u", "tenantId": "acme", "capabilities": [], "iss": "lad", "aud": "lad-billing",
              "iat": now, "exp": now + 600}
    bad = [
        {**claims, "aud": "lad-crm"},                        # minted for another LAD service
        {**claims, "iss": "someone-else"},
        {**claims, "exp": now + 7200},                       # longer than the maximum lifetime
        {k: v for k, v in {**claims, "exp": now + 7200}.items() if k != "iat"},
        {k: v for k, v in claims.items() if k != "sub"},     # sub is required
        {**claims, "sub": ""},
        {**claims, "tenantId": "nl-tenant\n"},               # 7: fullmatch, not match with $
    ]
    for payload in bad:
        with pytest.raises(ApiError) as refused:
            verify_token(jwt.encode(payload, "s" * 32, algorithm="HS256"), settings)
        assert refused.value.code == "unauthorized", payload


def test_rs256_tokens_when_a_public_key_is_set():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    settings = TokenSettings(secret="ignored", public_key=public_pem, issuer="lad", audience="billing")
    token = issue_token(settings, tenant_id="t1", capabilities=["billing.view"], private_key=private_pem)
    principal = verify_token(token, settings)
    assert principal.tenant_id == "t1" and principal.has("billing.view") and not principal.has("billing.charge")
    # an HS256 token made with the public key as secret (algorithm confusion) is refused
    forged = jwt.encode(claims("t1", iss="lad", aud="billing"), "ignored", algorithm="HS256")
    with pytest.raises(ApiError):
        verify_token(forged, settings)
    wrong_audience = issue_token(TokenSettings(None, public_pem, "lad", "other"), tenant_id="t1",
                                 capabilities=[], private_key=private_pem)
    with pytest.raises(ApiError):
        verify_token(wrong_audience, settings)
