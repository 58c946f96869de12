"""Page cursors over (created_at, id), newest first: opaque, URL-safe, and checked when read back."""
from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone

from .errors import ValidationFailed


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
