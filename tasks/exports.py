"""Parquet exports: yesterday's, every tenant, run by beat at 00:40 UTC (after the day's last
transactions have committed); and the runs asked for by POST /exports."""
from __future__ import annotations

import uuid
from typing import Any

from billing_core import logs
from billing_core.bootstrap import runtime, unit_of_work
from billing_core.exports import runs
from billing_core.exports.commands import ExportRequest
from tasks.app import celery_app

log = logs.get(__name__)


def _outcome(found: runs.ExportRun) -> dict[str, Any]:
    return {"exportId": str(found.id), "day": found.day.isoformat(), "status": found.status,
            "files": len(found.files), "rows": sum(f["rows"] for f in found.files)}


@celery_app.task(name="billing.export_day", soft_time_limit=1800, time_limit=1900)
def export_day(export_id: str) -> dict[str, Any]:
    """Write a recorded export run (POST /exports)."""
    found = runs.run(unit_of_work, uuid.UUID(export_id), runtime().settings.export_url)
    log.info("export", **_outcome(found))
    return _outcome(found)


@celery_app.task(name="billing.export_yesterday", soft_time_limit=1800, time_limit=1900)
def export_yesterday() -> dict[str, Any]:
    """Yesterday (UTC), every table, every tenant. A second run replaces the same files."""
    with unit_of_work() as uow:
        started = runs.start(uow, ExportRequest(), tenant_id=None, requested_by="beat")
    found = runs.run(unit_of_work, started.id, runtime().settings.export_url)
    log.info("export", **_outcome(found))
    return _outcome(found)
