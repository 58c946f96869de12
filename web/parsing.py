"""Turning an HTTP request into validated commands and query objects."""
from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, TypeVar

from flask import current_app, g, request
from pydantic import BaseModel, ValidationError

from billing_core.errors import BillingError, NotFound, ValidationFailed
from billing_core.usage.commands import ChargeRequest
from web.errors import validation_failed

M = TypeVar("M", bound=BaseModel)


def json_body() -> dict[str, Any]:
    """The request body as a JSON object; numbers arrive as Decimal. Over the route's body limit (web.app): 413.
    Parsed once per request (a batch's rate-limit weight reads it before its handler)."""
    parsed = g.get("lad_json_body")
    if parsed is not None:
        return parsed
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ValidationFailed("body", "a JSON object is required")
    try:
        body = current_app.json.loads(raw)
    except (ValueError, ArithmeticError, RecursionError) as exc:
        # ArithmeticError: a number whose exponent no Decimal can hold, e.g. 1e1000000000000000000
        raise ValidationFailed("body", "not valid JSON") from exc
    if not isinstance(body, dict):
        raise ValidationFailed("body", "must be a JSON object")
    g.lad_json_body = body
    return body


def parse(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc) from exc


def parse_batch_event(index: int, event: dict[str, Any], tenant_id: str) -> ChargeRequest | BillingError:
    """One event of a batch, validated on its own; its failure is its outcome, not the batch's."""
    try:
        command = ChargeRequest.model_validate(event)
    except ValidationError as exc:
        return validation_failed(exc, prefix=f"events[{index}].")
    if command.tenantId is not None and command.tenantId != tenant_id:
        return ValidationFailed(f"events[{index}].tenantId", "every event of a batch is for the batch's tenant")
    return command


def parse_query(model: type[M]) -> M:
    return parse(model, request.args.to_dict())


def with_idempotency_header(body: dict[str, Any]) -> dict[str, Any]:
    """`Idempotency-Key` header and `idempotencyKey` body field are one thing; both must agree."""
    header = request.headers.get("Idempotency-Key")
    if header is None:
        return body
    if "idempotencyKey" in body and body["idempotencyKey"] != header:
        raise ValidationFailed("idempotencyKey", "differs from the Idempotency-Key header")
    return {**body, "idempotencyKey": header}


def path_uuid(value: str, what: str) -> uuid.UUID:
    """An id from the URL; anything that is not one of ours is simply not found."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} {value} not found") from None


def time_bound(value: str | None, field: str, *, end: bool) -> datetime | None:
    """Parse `from`/`to`. Returns an inclusive start or an exclusive end; a date-only `to`
    covers that whole day. Times without an offset are UTC."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            moment = datetime.combine(date.fromisoformat(value), time.min, tzinfo=timezone.utc)
            step = timedelta(days=1)
        else:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            moment = moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
            step = timedelta(microseconds=1)
    except (ValueError, OverflowError):
        raise ValidationFailed(field, "must be an ISO 8601 date or date-time within the calendar") from None
    if not end:
        return moment
    try:
        return moment + step
    except OverflowError:
        return None  # the end of the calendar: no upper bound
