"""Idempotency records: one per (tenant, key), holding the request's fingerprint and what it produced."""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Table,
    Text,
    Uuid,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert

from billing_core.db import UnitOfWork, metadata
from billing_core.errors import IdempotencyConflict


@dataclass(frozen=True)
class IdempotencyRecord:
    tenant_id: str
    idempotency_key: str
    operation: str
    request_fingerprint: str
    usage_event_id: uuid.UUID | None
    ledger_entry_id: uuid.UUID | None
    created_at: datetime
    resource_id: uuid.UUID | None = None


def fingerprint(operation: str, body: dict[str, Any]) -> str:
    canonical = json.dumps({"operation": operation, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def find(uow: UnitOfWork, tenant_id: str, keys: list[str]) -> dict[str, IdempotencyRecord]:
    if not keys:
        return {}
    rows = uow.connection.execute(
        select(idempotency_records).where(
            idempotency_records.c.tenant_id == tenant_id, idempotency_records.c.idempotency_key.in_(keys)
        )
    )
    return {row.idempotency_key: IdempotencyRecord(**row._mapping) for row in rows}


def conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        "this idempotencyKey was already used for a different request",
        {"field": "idempotencyKey", "idempotencyKey": key},
    )


def replayable(record: IdempotencyRecord, operation: str, request_fingerprint: str) -> uuid.UUID:
    """The usage event an earlier identical request made; IdempotencyConflict for another request."""
    if record.operation != operation or record.request_fingerprint != request_fingerprint:
        raise conflict(record.idempotency_key)
    assert record.usage_event_id is not None
    return record.usage_event_id


def claim(uow: UnitOfWork, tenant_id: str, key: str, operation: str, request_fingerprint: str) -> IdempotencyRecord | None:
    """Claim `key` for one request inside the caller's transaction.

    Returns None when this request is the first to use the key (the caller goes on and commits).
    Returns the earlier record when the same request was already made: the caller replays it.
    Raises IdempotencyConflict when the key was used for a different request.
    """
    inserted = uow.connection.execute(
        insert(idempotency_records)
        .values(tenant_id=tenant_id, idempotency_key=key, operation=operation,
                request_fingerprint=request_fingerprint, created_at=func.now())
        .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
        .returning(idempotency_records.c.idempotency_key)
    ).first()
    if inserted is not None:
        return None
    record = find(uow, tenant_id, [key])[key]
    if record.operation != operation or record.request_fingerprint != request_fingerprint:
        raise conflict(key)
    return record


def record_result(uow: UnitOfWork, tenant_id: str, key: str, *, ledger_entry_id: uuid.UUID | None = None,
                  resource_id: uuid.UUID | None = None) -> None:
    """Remember what the request that claimed `key` made, for its replays."""
    uow.connection.execute(
        update(idempotency_records)
        .where(idempotency_records.c.tenant_id == tenant_id, idempotency_records.c.idempotency_key == key)
        .values(ledger_entry_id=ledger_entry_id, resource_id=resource_id)
    )


idempotency_records = Table(
    "idempotency_records", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("idempotency_key", Text, primary_key=True),
    Column("operation", Text, nullable=False),
    Column("request_fingerprint", Text, nullable=False),
    Column("usage_event_id", Uuid),
    Column("ledger_entry_id", Uuid),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("resource_id", Uuid),  # a reservation, refund's entry or other resource the request made
)
