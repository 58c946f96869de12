"""One error envelope for domain errors, validation errors and HTTP errors."""
from __future__ import annotations

from typing import Any, Literal

import sqlalchemy.exc
from flask import Flask, Response, jsonify
from pydantic import BaseModel, ConfigDict, ValidationError
from werkzeug.exceptions import HTTPException

from billing_core import logs
from billing_core.errors import BillingError, ValidationFailed

log = logs.get(__name__)

# The one map from an error code to its HTTP status: for the API's answers and the pages' alike.
STATUS_BY_CODE = {
    "validation_error": 400,
    "unauthorized": 401,
    "insufficient_balance": 402,
    "reservation_exceeded": 402,
    "budget_exceeded": 402,
    "invalid_signature": 400,
    "forbidden": 403,
    "wallet_blocked": 403,
    "not_found": 404,
    "price_not_found": 404,
    "method_not_allowed": 405,
    "idempotency_conflict": 409,
    "reservation_closed": 409,
    "sub_account_exists": 409,
    "tenant_is_agency": 409,
    "sub_account_has_balance": 409,
    "refund_billed_by_agency": 409,
    "period_not_closed": 409,
    "period_not_started": 409,
    "reservation_expired": 410,
    "quote_expired": 410,
    "refund_exceeded": 422,
    "payload_too_large": 413,
    "request_timeout": 408,
    "uri_too_long": 414,
    "headers_too_large": 431,
    "rate_limited": 429,
    "concurrency_limit": 429,
    "internal_error": 500,
    "unavailable": 503,
}

CODE_BY_HTTP_STATUS = {400: "validation_error", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                       405: "method_not_allowed", 413: "payload_too_large", 429: "rate_limited",
                       503: "unavailable"}


def keys_may_be_added(schema: dict[str, Any]) -> None:
    """The JSON schema of a response model: the service refuses to write a key its model does not name
    (extra="forbid"), but the contract does not promise clients that no key is ever added."""
    schema.pop("additionalProperties", None)


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=keys_may_be_added)
    code: str
    message: str
    details: dict[str, Any]


class ErrorResponse(BaseModel):
    # every error answer of the API (documented for each route by web.api.routing.documented)
    model_config = ConfigDict(extra="forbid", json_schema_extra=keys_may_be_added)
    success: Literal[False]
    error: ErrorDetail


class ApiError(Exception):
    """An HTTP-level refusal (auth, capability) that is not a domain error."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}
        self.status = STATUS_BY_CODE[code]


def status_for(code: str, details: dict[str, Any]) -> int:
    # a price looked up directly is "not found"; an item of a quote or charge without one is 422
    if code == "price_not_found" and "index" in details:
        return 422
    return STATUS_BY_CODE.get(code, 400)


def error_response(code: str, message: str, details: dict[str, Any] | None = None,
                   status: int | None = None) -> Response:
    details = details or {}
    body = ErrorResponse(success=False, error=ErrorDetail(code=code, message=message, details=details))
    response = jsonify(body.model_dump())
    response.status_code = status or status_for(code, details)
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="lad-billing"'
    return response


def field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validation_failed(exc: ValidationError, prefix: str = "") -> ValidationFailed:
    errors = [
        {"field": prefix + field_path(e["loc"]) if e["loc"] else prefix.rstrip(".") or "body",
         "message": e["msg"].removeprefix("Value error, ")}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    first = errors[0]
    return ValidationFailed(first["field"], first["message"], errors)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(BillingError)
    def _domain(exc: BillingError) -> Response:
        return error_response(exc.code, exc.message, exc.details)

    @app.errorhandler(ApiError)
    def _api(exc: ApiError) -> Response:
        return error_response(exc.code, exc.message, exc.details, exc.status)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        response = error_response(CODE_BY_HTTP_STATUS.get(status, "http_error"), exc.description or exc.name,
                                  status=status)
        for name, value in exc.get_headers():  # e.g. Allow on 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(sqlalchemy.exc.OperationalError)
    @app.errorhandler(sqlalchemy.exc.TimeoutError)
    def _database_unavailable(exc: Exception) -> Response:
        # PostgreSQL down or out of connections: nothing was accepted, the client may retry
        log.error("database unavailable", error=str(exc))
        response = error_response("unavailable", "the billing database is unavailable; retry later")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return error_response("internal_error", "internal error", status=500)
