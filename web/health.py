"""Liveness, readiness and the OpenAPI document (outside /api/billing)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from tasks.app import celery_app
from web.openapi import spec
from web.runtime import runtime

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok", "checks": {}})


@health.get("/readyz")
def readyz() -> Response:
    checks = {"postgres": _check_postgres(), "broker": _check_broker()}
    ready = all(result == "ok" for result in checks.values())
    response = jsonify({"status": "ok" if ready else "unavailable", "checks": checks})
    response.status_code = 200 if ready else 503
    return response


def _check_postgres() -> str:
    try:
        with runtime().engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # readiness reports any failure; it never raises
        return f"error: {type(exc).__name__}"


def _check_broker() -> str:
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


# the portal's and the console's pages are for browsers, not part of the API the document describes
PAGE_PREFIXES = ("/portal/", "/console/")


@health.get("/openapi.json")
def openapi_document() -> Response:
    document = spec.spec
    return jsonify({**document, "paths": {path: operations for path, operations in document["paths"].items()
                                          if not path.startswith(PAGE_PREFIXES)}})

