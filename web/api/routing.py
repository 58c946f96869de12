from __future__ import annotations

from typing import Any

import kombu.exceptions
import redis
from flask import Blueprint, Response, current_app, jsonify
from spectree import Response as Documented

from billing_core.db import UnitOfWork, engine_for, read_engine
from web import schemas
from web.openapi import spec

billing = Blueprint("billing", __name__, url_prefix="/api/billing")


BROKER_ERRORS = (kombu.exceptions.OperationalError, redis.RedisError, OSError)


def documented(ok: dict[int, type], *errors: int, **kwargs: Any):
    """OpenAPI for a route; requests are validated by the handler itself (see web.parsing)."""
    responses = {f"HTTP_{status}": model for status, model in ok.items()}
    for status in (400, 401, 429, *errors):
        responses[f"HTTP_{status}"] = schemas.ErrorResponse
    return spec.validate(resp=Documented(**responses), skip_validation=True, tags=["billing"], **kwargs)


def unit_of_work() -> UnitOfWork:
    return UnitOfWork(engine_for(current_app.config["LAD_SETTINGS"].database_url))


def read_unit_of_work() -> UnitOfWork:
    """For the heavy reads only (billing_core.db.read_engine): served by the replica when there is one."""
    return UnitOfWork(read_engine(current_app.config["LAD_SETTINGS"]))


def ok(status: int = 200, replayed: bool = False, **body: Any) -> Response:
    response = jsonify({"success": True, **body})
    response.status_code = status
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response
