from __future__ import annotations

from typing import Any

import kombu.exceptions
import redis
from flask import Blueprint
from spectree import Response as Documented

from web.errors import ErrorResponse
from web.openapi import spec

billing = Blueprint("billing", __name__, url_prefix="/api/billing")


BROKER_ERRORS = (kombu.exceptions.OperationalError, redis.RedisError, OSError)


def documented(ok: dict[int, type | None], *errors: int, **kwargs: Any):  # None: not JSON (a file)
    """OpenAPI for a route: the response models are the ones the handler answers through (web.api.answers.ok);
    requests are validated by the handler itself (see web.parsing)."""
    responses = {f"HTTP_{status}": model for status, model in ok.items()}
    for status in (400, 401, 429, *errors):
        responses[f"HTTP_{status}"] = ErrorResponse
    return spec.validate(resp=Documented(**responses), skip_validation=True, tags=["billing"], **kwargs)


