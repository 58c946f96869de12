"""Flask application factory."""
from __future__ import annotations

from typing import Any

from flask import Flask, request

from billing_core import logs
from billing_core.config import Settings

# their routes join the blueprint
from . import (  # noqa: F401
    alerts_api,
    auto_topup_api,
    invoices_api,
    lifecycle_api,
    page_sessions_api,
    stripe_webhook,
)
from .api import billing
from .auth import TokenSettings
from .errors import register_error_handlers
from .health import health
from .json import BillingJSONProvider
from .limits import init_limiter
from .observability import init_observability
from .openapi import spec
from .outcomes import ChargeOutcomeListener
from .pages.console import console
from .pages.portal import portal

# One body limit per route, decided here: 1 MiB, and more only for the batch endpoint (1,000 charges
# with their items and metadata). web.serving enforces it while reading a body, before any route or
# authentication sees it; Flask holds each request to the same figure when it parses.
MAX_BODY_BYTES = 1024 * 1024
BODY_LIMITS = {("POST", "/api/billing/charges"): 16 * 1024 * 1024}


def body_limit(method: str, path: str) -> int:
    return BODY_LIMITS.get((method, path), MAX_BODY_BYTES)


def _route_body_limit() -> None:
    request.max_content_length = body_limit(request.method, request.path)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.json_provider_class = BillingJSONProvider
    app.json = BillingJSONProvider(app)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, LAD_SETTINGS=Settings.from_env())
    app.config.update(config or {})
    app.before_request(_route_body_limit)
    settings: Settings = app.config["LAD_SETTINGS"]
    app.extensions["lad_tokens"] = app.config.get("LAD_TOKENS") or TokenSettings.from_env()
    app.extensions["lad_outcomes"] = ChargeOutcomeListener(settings.redis_url, settings.charge_outcome_channel)
    from . import pricing_api  # noqa: F401 - pricing models, costs and margins: routes join the blueprint
    app.register_blueprint(billing)
    init_limiter(app)
    app.register_blueprint(health)
    app.register_blueprint(portal)
    app.register_blueprint(console)
    register_error_handlers(app)
    init_observability(app)
    spec.register(app)
    from .cli import billing_cli

    app.cli.add_command(billing_cli)
    logs.configure()
    return app
