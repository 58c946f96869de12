"""Parquet exports read back with pyarrow against the database: per table, the day's row counts and
amount sums are the database's; a re-run leaves one copy; no float column; a tenant's export holds
only its rows; the manifest's checksums are the files'."""
from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from billing_core.db import UnitOfWork
from billing_core.errors import ValidationFailed
from billing_core.exports import parquet, runs
from billing_core.exports.commands import TABLES, ExportRequest
from tests.support.helpers import stt_items
from tests.support.invoices import History

# per exported table: the database's rows of a day (every tenant or :tenant) and the amount summed
IN_DB = {
    "ledger_entries": ("ledger_entries x", "x.created_at", "amount"),
    "usage_events": ("usage_events x", "x.created_at", "total_cost"),
    "usage_items": ("usage_event_items x JOIN usage_events e ON e.tenant_id = x.tenant_id AND e.id = x.usage_event_id",
                    "e.created_at", "cost"),
    "grants": ("credit_grants x", "x.created_at", "amount"),
    "documents": ("(SELECT tenant_id, issued_at, gross FROM receipts UNION ALL "
                  "SELECT tenant_id, issued_at, NULL FROM invoices) x", "x.issued_at", "gross"),
}


def _in_db(engine, table: str, day, tenant: str | None) -> tuple[int, Decimal]:
    source, at, amount = IN_DB[table]
    start = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc)
    with engine.connect() as connection:
        count, total = connection.execute(text(
            f"SELECT count(*), coalesce(sum(x.{amount}), 0) FROM {source} WHERE {at} >= :s AND {at} < :e"
            + ("" if tenant is None else " AND x.tenant_id = :t")),
            {"s": start, "e": start + timedelta(days=1), "t": tenant}).one()
    return count, Decimal(total)


@pytest.fixture
def day_of_money(engine):
    """Two tenants with top-ups (receipts), charges and their items today; (day, tenants)."""
    tenants = [f"exp-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    for n, tenant in enumerate(tenants):
        history = History(engine, tenant)
        with UnitOfWork(engine) as uow:
            now = uow.now()
        history.top_up(now, "50")
        for _ in range(n + 2):
            history.charge(now, "call", stt_items("1234.5"))
    with UnitOfWork(engine) as uow:
        return uow.now().date(), tenants


def _read(root: Path, relative: str) -> pa.Table:
    return pq.read_table(root / relative)


def test_every_table_of_the_day_reads_back_as_the_database_has_it(engine, tmp_path, day_of_money):
    day, tenants = day_of_money
    with UnitOfWork(engine) as uow:
        files = parquet.export_day(uow, str(tmp_path), day, list(TABLES), None)
    assert [f.table for f in files] == list(TABLES)
    for exported in files:
        table = _read(tmp_path, exported.path)
        assert not [f.name for f in table.schema if pa.types.is_floating(f.type)], exported.table
        count, total = _in_db(engine, exported.table, day, None)
        amount = IN_DB[exported.table][2]
        assert table.num_rows == exported.rows == count, exported.table
        assert table.schema.field(amount).type == pa.decimal128(38, 24)
        assert sum((v for v in table.column(amount).to_pylist() if v is not None), Decimal(0)) == total
        assert exported.sha256 == hashlib.sha256((tmp_path / exported.path).read_bytes()).hexdigest()
        assert {tenants[0], tenants[1]} <= set(table.column("tenant_id").to_pylist()) or exported.table == "documents"
    manifest = json.loads((tmp_path / parquet.manifest_path(day, None)).read_text())
    assert {f["table"]: (f["path"], f["rows"], f["sha256"]) for f in manifest["files"]} == \
        {f.table: (f.path, f.rows, f.sha256) for f in files}

    # a re-run of the day replaces each file: one copy of each row, no temporary file left behind
    with UnitOfWork(engine) as uow:
        again = parquet.export_day(uow, f"file://{tmp_path}", day, ["ledger_entries"], None)
    [ledger] = again
    directory = (tmp_path / ledger.path).parent
    assert [p.name for p in directory.iterdir()] == [Path(ledger.path).name]
    assert ledger.rows == _in_db(engine, "ledger_entries", day, None)[0]
    ids = _read(tmp_path, ledger.path).column("id").to_pylist()
    assert len(ids) == len(set(ids))
    manifest = json.loads((tmp_path / parquet.manifest_path(day, None)).read_text())
    assert len(manifest["files"]) == len(TABLES)  # the other tables' entries are kept


def test_a_tenant_export_has_its_own_rows_only(engine, tmp_path, day_of_money):
    day, (mine, other) = day_of_money
    with UnitOfWork(engine) as uow:
        files = parquet.export_day(uow, str(tmp_path), day, list(TABLES), mine)
    for exported in files:
        assert exported.path.startswith(f"tenants/{mine}/")
        table = _read(tmp_path, exported.path)
        assert set(table.column("tenant_id").to_pylist()) <= {mine}
        assert table.num_rows == _in_db(engine, exported.table, day, mine)[0] > 0 or exported.table == "documents"
        assert other not in set(table.column("tenant_id").to_pylist())


def test_runs_are_recorded_and_refuse_a_day_not_over(engine, tmp_path, day_of_money):
    day, (mine, _) = day_of_money
    with UnitOfWork(engine) as uow, pytest.raises(ValidationFailed):
        runs.start(uow, ExportRequest(date=day), tenant_id=None, requested_by="test")
    with UnitOfWork(engine) as uow:
        started = runs.start(uow, ExportRequest(date=day - timedelta(days=1), tables=["grants"]), tenant_id=mine,
                             requested_by="test")
    assert started.status == "running"
    finished = runs.run(lambda: UnitOfWork(engine), started.id, str(tmp_path))
    assert finished.status == "completed" and [f["table"] for f in finished.files] == ["grants"]
    with UnitOfWork(engine) as uow:
        assert runs.get(uow, started.id, tenant_id=mine).status == "completed"
