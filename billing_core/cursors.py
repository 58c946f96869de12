"""Page cursors over (created_at, id), newest first: opaque, URL-safe, and checked when read back."""
from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Select, and_, or_

from billing_core.errors import ValidationFailed


def encode_cursor(created_at: datetime, event_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(event_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, event_id = json.loads(raw)
        if not (isinstance(created_at, str) and isinstance(event_id, str)):
            raise ValueError("cursor fields are not strings")
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None:
            raise ValueError("cursor time has no offset")
        return moment.astimezone(timezone.utc), uuid.UUID(event_id)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValidationFailed("cursor", "not a cursor this service issued") from exc


def newest_first(query: Select, table: Any, cursor: str | None, limit: int, at: str = "created_at") -> Select:
    """`query` as one page newest first by (`at`, id), after `cursor`; one row more than `limit` is asked
    for, to tell whether another page follows (see next_cursor)."""
    moment = table.c[at]
    if cursor:
        after, last_id = decode_cursor(cursor)
        query = query.where(or_(moment < after, and_(moment == after, table.c.id < last_id)))
    return query.order_by(moment.desc(), table.c.id.desc()).limit(limit + 1)


def next_cursor(rows: Sequence[Any], limit: int, at: str = "created_at") -> str | None:
    """The cursor after the last row of a page from newest_first, or None on the last page."""
    return encode_cursor(getattr(rows[limit - 1], at), rows[limit - 1].id) if len(rows) > limit else None
