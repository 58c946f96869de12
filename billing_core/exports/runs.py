"""Export runs: what was asked (a day, tables, every tenant or one), its state and the files written."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update

from billing_core import logs
from billing_core.db import UnitOfWork
from billing_core.errors import NotFound, ValidationFailed
from billing_core.exports import parquet
from billing_core.exports.commands import TABLES, ExportRequest
from billing_core.exports.tables import export_runs

log = logs.get(__name__)
RUNNING, COMPLETED, FAILED = "running", "completed", "failed"


@dataclass(frozen=True)
class ExportRun:
    id: uuid.UUID
    day: date
    tables: list[str]
    tenant_id: str | None
    status: str
    files: list[dict[str, Any]]
    error: str | None
    requested_by: str | None
    started_at: datetime
    finished_at: datetime | None


def start(uow: UnitOfWork, command: ExportRequest, *, tenant_id: str | None, requested_by: str | None) -> ExportRun:
    """Record a run (status running) and commit; the worker writes it (`run`). A day in the future, or
    today's (still being written), is refused."""
    today = uow.now().date()
    day = command.date or today - timedelta(days=1)
    if day >= today:
        raise ValidationFailed("date", f"must be a UTC day that is over (before {today.isoformat()})")
    tables = list(dict.fromkeys(command.tables or TABLES))
    run_id = uuid.uuid4()
    uow.connection.execute(insert(export_runs).values(
        id=run_id, day=day, tables=tables, tenant_id=tenant_id, status=RUNNING, files=[], requested_by=requested_by,
        started_at=func.now()))
    found = get(uow, run_id)
    uow.commit()
    return found


def get(uow: UnitOfWork, run_id: uuid.UUID, *, tenant_id: str | None = None) -> ExportRun:
    """A run; with `tenant_id`, only that tenant's own (scoped) runs are found."""
    query = select(export_runs).where(export_runs.c.id == run_id)
    if tenant_id is not None:
        query = query.where(export_runs.c.tenant_id == tenant_id)
    row = uow.connection.execute(query).one_or_none()
    if row is None:
        raise NotFound(f"export {run_id} not found")
    return ExportRun(**row._mapping)


def run(units: Callable[[], UnitOfWork], run_id: uuid.UUID, url: str) -> ExportRun:
    """Write a recorded run's files and mark it completed (or failed, with the error). Three units of
    work from `units`: read the run, write the files from one snapshot, record the outcome."""
    with units() as uow:
        found = get(uow, run_id)
    try:
        with units() as uow:
            files = parquet.export_day(uow, url, found.day, found.tables, found.tenant_id)
    except Exception as exc:  # the run says why; the task logs it and gives up (a person looks)
        log.error("export failed", export_id=str(run_id), day=found.day.isoformat(), error=repr(exc))
        with units() as uow:
            _finish(uow, run_id, FAILED, [], repr(exc)[:2000])
        raise
    with units() as uow:
        return _finish(uow, run_id, COMPLETED, [f.as_json() for f in files], None)


def _finish(uow: UnitOfWork, run_id: uuid.UUID, status: str, files: list[dict[str, Any]],
            error: str | None) -> ExportRun:
    uow.connection.execute(update(export_runs).where(export_runs.c.id == run_id).values(
        status=status, files=files, error=error, finished_at=func.now()))
    found = get(uow, run_id)
    uow.commit()
    return found
