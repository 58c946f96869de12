"""Flask application factory."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Flask, redirect, request
from werkzeug.routing import RequestRedirect
from werkzeug.wrappers import Response as BaseResponse

from billing_core import logs
from billing_core.bootstrap import Runtime, Settings
from tasks.usage import request_charging
from web.api import billing
from web.auth import TokenSettings
from web.errors import register_error_handlers
from web.health import health
from web.json import BillingJSONProvider
from web.limits import init_limiter
from web.observability import init_observability
from web.openapi import spec
from web.outcomes import ChargeOutcomeListener
from web.pages import agency as _agency_pages  # noqa: F401  (the agency's pages, in the portal)
from web.pages import console_agencies as _console_agencies  # noqa: F401  (agencies, in the console)
from web.pages.common import public_url
from web.pages.console import console
from web.pages.portal import portal

# One body limit per route, decided here: 1 MiB, and more only for the batch endpoint (1,000 charges
# with their items and metadata). web.serving enforces it while reading a body, before any route or
# authentication sees it; Flask holds each request to the same figure when it parses.
MAX_BODY_BYTES = 1024 * 1024
BODY_LIMITS = {("POST", "/api/billing/charges"): 16 * 1024 * 1024}


def body_limit(method: str, path: str) -> int:
    return BODY_LIMITS.get((method, path), MAX_BODY_BYTES)


def public_url_of(settings: Settings) -> str:
    """The service's own address for links and redirects (LAD_PUBLIC_URL), never a request's Host header:
    required in production; in development http://localhost:PORT."""
    url = (settings.lad_public_url or "").strip().rstrip("/")
    if not url:
        if settings.production:
            raise RuntimeError("LAD_ENV=production needs LAD_PUBLIC_URL (the address links and redirects name)")
        url = f"http://localhost:{settings.port}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise RuntimeError(f"LAD_PUBLIC_URL must be an http(s) address like https://billing.example.com, not {url!r}")
    return url


def _route_body_limit() -> None:
    request.max_content_length = body_limit(request.method, request.path)


def _public_redirect() -> BaseResponse | None:
    """Werkzeug's own redirects (a missing trailing slash) name the request's Host: name ours instead."""
    moved = request.routing_exception
    if not isinstance(moved, RequestRedirect):
        return None
    target = urlsplit(moved.new_url)
    return redirect(public_url() + target.path + (f"?{target.query}" if target.query else ""), code=moved.code)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The web app. `config` may carry LAD_SETTINGS (default: read from the environment, once, here),
    LAD_TOKENS (token settings), LAD_PUBLIC_URL and LAD_REQUEST_CHARGING (how accepted charges reach the
    workers; default tasks.usage.request_charging)."""
    config = config or {}
    settings: Settings = config.get("LAD_SETTINGS") or Settings()
    app = Flask(__name__)
    app.json_provider_class = BillingJSONProvider
    app.json = BillingJSONProvider(app)
    app.config.update({"MAX_CONTENT_LENGTH": MAX_BODY_BYTES, **config, "LAD_SETTINGS": settings})
    app.config.setdefault("LAD_PUBLIC_URL", public_url_of(settings))
    app.before_request(_public_redirect)
    app.before_request(_route_body_limit)
    app.extensions["lad_runtime"] = Runtime(settings)
    app.extensions["lad_tokens"] = config.get("LAD_TOKENS") or TokenSettings.of(settings)
    app.extensions["lad_request_charging"] = config.get("LAD_REQUEST_CHARGING") or request_charging
    app.extensions["lad_outcomes"] = ChargeOutcomeListener(settings.redis_url, settings.charge_outcome_channel)
    app.register_blueprint(billing)
    init_limiter(app)
    app.register_blueprint(health)
    app.register_blueprint(portal)
    app.register_blueprint(console)
    register_error_handlers(app)
    init_observability(app)
    spec.register(app)
    from web.cli import billing_cli

    app.cli.add_command(billing_cli)
    logs.configure(settings.log_level)
    return app
