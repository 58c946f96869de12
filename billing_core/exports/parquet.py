"""One UTC day of billing data as Parquet, one file per table, under EXPORT_URL (a directory or any
fsspec URL):

    <EXPORT_URL>/[tenants/<tenant>/]<table>/day=YYYY-MM-DD/<table>-YYYY-MM-DD.parquet
    <EXPORT_URL>/[tenants/<tenant>/]_manifests/day=YYYY-MM-DD.json   (files, row counts, sha256)

Exactly once per day and table: a file's name is fixed by its day and table, and it is written to a
temporary name and moved over the old one, so a re-run replaces that day's file whole (a reader sees the
old file or the new one, never a half or both) and a row is never in two files. Every table of a run is
read in one REPEATABLE READ snapshot, so the files of a run agree with each other and with the database.
A row belongs to the day of its creation (`created_at`; documents: `issued_at`; items: their event's).

Amounts are decimal128(38, 24): the ledger stores exact NUMERIC with at most 24 decimal places (a
12-place quantity times a 12-place price); a value that would not fit fails the run, never rounds.
Nothing is a float. Ids are strings, times UTC timestamps in microseconds, JSON columns JSON text.
Provider costs (operators' margins) are not exported.
"""
from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import text

from billing_core.db import UnitOfWork

AMOUNT = pa.decimal128(38, 24)
ADVISORY_NAMESPACE = 0x1A0_E4B  # pg_advisory_xact_lock(namespace, day): one run of a day at a time
# PostgreSQL type oids of the columns below -> Arrow types
_ARROW = {1700: AMOUNT, 2950: pa.string(), 25: pa.string(), 1043: pa.string(), 20: pa.int64(), 23: pa.int32(),
          21: pa.int16(), 16: pa.bool_(), 1082: pa.date32(), 1184: pa.timestamp("us", tz="UTC")}

_DAY = "{alias}.{column} >= :start AND {alias}.{column} < :end"
QUERIES = {
    "ledger_entries": """
        SELECT l.id, l.seq, l.tenant_id, l.wallet_id, l.entry_type, l.amount, l.balance_before, l.balance_after,
               l.reserved_change, l.usage_event_id, l.reservation_id, l.grant_id, l.related_entry_id, l.reference,
               l.description, l.idempotency_key, l.created_by, l.created_at
        FROM ledger_entries l WHERE {day_l} {tenant_l} ORDER BY l.tenant_id, l.seq""",
    "usage_events": """
        SELECT e.id, e.seq, e.tenant_id, e.task_id, e.feature_key, e.external_reference_id, e.idempotency_key,
               e.user_id, e.status, e.total_cost, e.currency, e.rejection_code, e.rejection_reason,
               e.metadata::text AS metadata, e.reservation_id, e.quote_id, e.created_at, e.charged_at,
               e.occurred_at
        FROM usage_events e WHERE {day_e} {tenant_e} ORDER BY e.tenant_id, e.seq""",
    "usage_items": """
        SELECT i.id, i.tenant_id, i.usage_event_id, i.position, i.category, i.provider, i.model, i.unit,
               i.quantity, i.unit_price, i.cost, i.price_id, i.pricing::text AS pricing,
               e.created_at AS event_created_at
        FROM usage_event_items i JOIN usage_events e ON e.tenant_id = i.tenant_id AND e.id = i.usage_event_id
        WHERE {day_e} {tenant_i} ORDER BY i.tenant_id, e.seq, i.position""",
    "grants": """
        SELECT g.id, g.tenant_id, g.wallet_id, g.kind, g.source, g.amount, g.priority, g.expires_at, g.reference,
               g.created_at
        FROM credit_grants g WHERE {day_g} {tenant_g} ORDER BY g.tenant_id, g.created_at, g.id""",
    "documents": """
        SELECT * FROM (
            SELECT r.id, r.tenant_id, 'receipt'::text AS document_type, r.number, r.issued_at, r.currency,
                   NULL::date AS period, r.net, r.tax, r.gross, r.tax_label, r.grant_id,
                   NULL::numeric AS opening_balance, NULL::numeric AS total_credits, NULL::numeric AS total_usage,
                   NULL::numeric AS closing_balance
            FROM receipts r WHERE {day_r} {tenant_r}
            UNION ALL
            SELECT v.id, v.tenant_id, 'invoice', v.number, v.issued_at, v.currency, v.period, NULL, NULL, NULL,
                   NULL, NULL, v.opening_balance, v.total_credits, v.total_usage, v.closing_balance
            FROM invoices v WHERE {day_v} {tenant_v}
            UNION ALL
            -- a credit or debit note: its signed amount (positive credited back) in gross, the month it
            -- corrects in period
            SELECT n.id, n.tenant_id, n.kind, n.number, n.issued_at, n.currency, n.corrects_period, NULL, NULL,
                   n.amount, NULL, NULL, NULL, NULL, NULL, NULL
            FROM credit_notes n WHERE {day_n} {tenant_n}
        ) d ORDER BY d.tenant_id, d.issued_at, d.number""",
}
_DAY_COLUMNS = {"l": "created_at", "e": "created_at", "g": "created_at", "r": "issued_at", "v": "issued_at",
                "n": "issued_at"}


@dataclass(frozen=True)
class ExportedFile:
    table: str
    path: str  # relative to EXPORT_URL
    rows: int
    sha256: str
    bytes: int

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "path": self.path, "rows": self.rows, "sha256": self.sha256,
                "bytes": self.bytes}


def _query(table: str, tenant_id: str | None) -> str:
    fill = {f"day_{alias}": _DAY.format(alias=alias, column=column) for alias, column in _DAY_COLUMNS.items()}
    # one tenant's rows, or every tenant's: an operator-wide scan without locks (docs/scaling.md)
    every = "/* citus:operator-scan export */"
    fill.update({f"tenant_{alias}": every if tenant_id is None else f"AND {alias}.tenant_id = :tenant_id"
                 for alias in ("l", "e", "i", "g", "r", "v", "n")})
    return QUERIES[table].format(**fill)


def _arrow_value(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


def table_for(uow: UnitOfWork, table: str, day: date, tenant_id: str | None) -> pa.Table:
    """The rows of `table` created on `day` (every tenant, or one) as an Arrow table."""
    start = datetime.combine(day, time(), tzinfo=timezone.utc)
    result = uow.connection.execute(text(_query(table, tenant_id)),
                                    {"start": start, "end": start + timedelta(days=1), "tenant_id": tenant_id})
    description = result.cursor.description
    rows = result.all()
    columns = [str(column[0]) for column in description]
    types = [_ARROW[int(column[1])] for column in description]  # type: ignore[call-overload]
    arrays = [pa.array([_arrow_value(row[i]) for row in rows], type=types[i]) for i in range(len(columns))]
    return pa.Table.from_arrays(arrays, schema=pa.schema(list(zip(columns, types, strict=True))))


def _write_atomically(fs: Any, path: str, data: bytes) -> None:
    """Write to a temporary name beside `path`, then move it over `path` (a rename on a file system)."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(temporary, "wb") as out:
        out.write(data)
    fs.mv(temporary, path)


def _prefix(tenant_id: str | None) -> str:
    return "" if tenant_id is None else f"tenants/{tenant_id}/"


def manifest_path(day: date, tenant_id: str | None) -> str:
    return f"{_prefix(tenant_id)}_manifests/day={day.isoformat()}.json"


def export_day(uow: UnitOfWork, url: str, day: date, tables: list[str], tenant_id: str | None) -> list[ExportedFile]:
    """Write the day's files of `tables` (replacing earlier ones) and its manifest; returns the files.
    Runs of the same day wait for each other (an advisory lock), so manifests never interleave."""
    uow.connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    uow.connection.execute(text("SELECT pg_advisory_xact_lock(:namespace, :day)"),
                           {"namespace": ADVISORY_NAMESPACE, "day": day.toordinal()})
    uow.connection.execute(text("SET LOCAL statement_timeout = '30min'"))
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    written = []
    for table in tables:
        relative = f"{_prefix(tenant_id)}{table}/day={day.isoformat()}/{table}-{day.isoformat()}.parquet"
        buffer = io.BytesIO()
        pq.write_table(table_for(uow, table, day, tenant_id), buffer, compression="zstd")
        data = buffer.getvalue()
        _write_atomically(fs, f"{root}/{relative}", data)
        written.append(ExportedFile(table, relative, pq.read_metadata(io.BytesIO(data)).num_rows,
                                    hashlib.sha256(data).hexdigest(), len(data)))
    manifest = f"{root}/{manifest_path(day, tenant_id)}"
    earlier: dict[str, Any] = {}
    if fs.exists(manifest):
        with fs.open(manifest, "rb") as found:
            earlier = {f["table"]: f for f in json.load(found)["files"]}
    files = {**earlier, **{f.table: f.as_json() for f in written}}
    _write_atomically(fs, manifest, json.dumps({
        "day": day.isoformat(), "tenantId": tenant_id, "writtenAt": uow.now().isoformat(),
        "amountType": "decimal128(38, 24)", "files": [files[t] for t in sorted(files)]}, indent=2).encode())
    return written
