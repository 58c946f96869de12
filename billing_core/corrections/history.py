"""What the corrections of a tenant's events left them as: the voided ones, and each amended one's items
(its last amend's). Read by replays of past usage (re-rates, an agency's price-book preview), which must
price an event as it stands after its corrections."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text


@dataclass
class EventCorrections:
    voided: set[uuid.UUID] = field(default_factory=set)
    # an amended event's items as its last amend recorded them (the usage_corrections.items JSON)
    amended: dict[uuid.UUID, list[dict[str, Any]]] = field(default_factory=dict)


def event_corrections(connection: Connection, tenant_id: str, ids: list[uuid.UUID]) -> EventCorrections:
    """The voids and the last amend of each of the tenant's events `ids` (one tenant's rows)."""
    found = EventCorrections()
    for row in connection.execute(text("""
        SELECT usage_event_id, action, items FROM usage_corrections
        WHERE tenant_id = :t AND usage_event_id = ANY(:ids) ORDER BY created_at, id
    """), {"t": tenant_id, "ids": ids}):
        if row.action == "void":
            found.voided.add(row.usage_event_id)
        else:  # the last amend's items are the event's items
            found.amended[row.usage_event_id] = row.items
    return found
