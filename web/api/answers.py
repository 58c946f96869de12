"""What every answer of the API shares: the field types of its response models (amounts as normalized
decimal strings, times as ISO 8601 UTC with "Z", ids as strings), the base of the query models, and
`ok()`, which writes a handler's answer through the model /openapi.json publishes. The error answer's
model is web.errors.ErrorResponse, beside the one map from error code to HTTP status.

A response model's fields are in the order its JSON has them; a field that may be absent from the
JSON has a default and is left unset by the representation when absent (answers are dumped with
exclude_unset), so a model says exactly which keys an answer has.
"""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from typing import Annotated, Any

from flask import Response, jsonify
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from billing_core import money
from billing_core.fields import TenantId
from web.errors import keys_may_be_added

DECIMAL_TEXT = re.compile(r"^-?\d+(\.\d+)?$")


def amount(value: Decimal | int | None) -> str | None:
    """An amount as the API writes it: plain notation, no exponent, no trailing zeros."""
    return None if value is None else money.format_decimal(value)  # type: ignore[arg-type]


def timestamp(value: datetime | None) -> str | None:
    """A time as the API writes it: ISO 8601 in UTC, with "Z"."""
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _decimal_text(value: Any) -> str:
    if isinstance(value, Decimal) or (isinstance(value, int) and not isinstance(value, bool)):
        return money.format_decimal(value)  # type: ignore[arg-type]
    if isinstance(value, str) and DECIMAL_TEXT.match(value):
        return value  # written already (e.g. the pricing breakdown stored with a charge)
    raise ValueError("not a decimal amount")


def _timestamp_text(value: Any) -> str:
    if isinstance(value, datetime):
        return timestamp(value)  # type: ignore[return-value]
    if isinstance(value, str):
        return value
    raise ValueError("not a time")


def _id_text(value: Any) -> str:
    if isinstance(value, uuid.UUID | str):
        return str(value)
    raise ValueError("not an id")


# Each type takes the domain's value (Decimal, datetime, UUID) and holds it as the text the API writes,
# so a model dumps to JSON-ready values and the pages show exactly what the API answers.
DecimalString = Annotated[str, BeforeValidator(_decimal_text),
                          WithJsonSchema({"type": "string", "pattern": DECIMAL_TEXT.pattern, "examples": ["0.037"]})]
Timestamp = Annotated[str, BeforeValidator(_timestamp_text),
                      WithJsonSchema({"type": "string", "description": "ISO 8601 UTC",
                                      "examples": ["2025-12-27T10:00:00Z"]})]
Uuid = Annotated[str, BeforeValidator(_id_text), WithJsonSchema({"type": "string", "format": "uuid"})]
TimeBound = Annotated[str, Field(max_length=64, description="ISO 8601 date or date-time (UTC when no offset)")]


class Answer(BaseModel):
    """A response body or a part of one; a key no model names is a mistake, not an addition."""
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True,
                              json_schema_extra=keys_may_be_added)


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantQuery(Query):
    tenantId: TenantId | None = None


def as_json(answer: Answer) -> dict[str, Any]:
    """The JSON object of a model as the API writes it (the pages render these too). Python mode:
    opaque client data (usage metadata) keeps its Decimal numbers, which web.json writes exactly."""
    return answer.model_dump(by_alias=True, exclude_unset=True)


def ok(model: type[Answer], status: int = 200, replayed: bool = False, **fields: Any) -> Response:
    """The answer `model` describes in /openapi.json, validated through it: `success: true` and `fields`."""
    if "success" in model.model_fields:
        fields = {"success": True, **fields}
    response = jsonify(as_json(model(**fields)))
    response.status_code = status
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response

