from __future__ import annotations

from sqlalchemy import ARRAY, Column, Date, DateTime, Table, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB

from billing_core.db import metadata

# an operator table: runs over every tenant (tenant_id NULL) or one
export_runs = Table(
    "export_runs", metadata,
    Column("id", Uuid, primary_key=True),
    Column("day", Date, nullable=False),
    Column("tables", ARRAY(Text), nullable=False),
    Column("tenant_id", Text),
    Column("status", Text, nullable=False),
    Column("files", JSONB, nullable=False),
    Column("error", Text),
    Column("requested_by", Text),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
)
