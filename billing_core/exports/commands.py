from __future__ import annotations

from datetime import date as Day
from typing import Literal

from pydantic import Field

from billing_core.fields import Strict, TenantId

ExportTable = Literal["ledger_entries", "usage_events", "usage_items", "grants", "documents"]
TABLES: tuple[ExportTable, ...] = ("ledger_entries", "usage_events", "usage_items", "grants", "documents")


class ExportRequest(Strict):
    """A UTC day (default: yesterday) of some tables (default: all) for every tenant or one."""
    date: Day | None = None
    tables: list[ExportTable] | None = Field(None, min_length=1, max_length=len(TABLES))
    tenantId: TenantId | None = None
