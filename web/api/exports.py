"""Parquet exports under /api/billing/exports: start one (a UTC day, some tables; every tenant for the
operator, its own rows for a tenant's billing.manage) and follow it."""
from __future__ import annotations

from typing import Literal

from flask import Response
from pydantic import Field

from billing_core import logs
from billing_core.exports import runs
from billing_core.exports.commands import ExportRequest, ExportTable
from tasks.exports import export_day
from web.api.answers import Answer, Timestamp, Uuid, ok
from web.api.routing import BROKER_ERRORS, billing, documented
from web.auth import ADMIN, MANAGE, authenticate
from web.errors import ApiError
from web.limits import rate_limited
from web.parsing import json_body, parse, path_uuid
from web.runtime import unit_of_work

log = logs.get(__name__)


class ExportFileOut(Answer):
    table: ExportTable
    path: str = Field(description="relative to EXPORT_URL: <table>/day=YYYY-MM-DD/<table>-YYYY-MM-DD.parquet")
    rows: int
    sha256: str = Field(description="hex digest of the file's bytes")
    bytes: int


class ExportStarted(Answer):
    id: Uuid
    status: Literal["running", "completed", "failed"]


class ExportOut(ExportStarted):
    date: str
    tables: list[ExportTable]
    tenantId: str | None = Field(description="null: every tenant")
    files: list[ExportFileOut]
    manifest: str = Field(description="the day's manifest, relative to EXPORT_URL")
    error: str | None
    startedAt: Timestamp
    finishedAt: Timestamp | None


class ExportStartedResponse(Answer):
    success: Literal[True]
    export: ExportStarted


class ExportResponse(Answer):
    success: Literal[True]
    export: ExportOut


def export_out(found: runs.ExportRun) -> ExportOut:
    from billing_core.exports.parquet import manifest_path

    return ExportOut(id=found.id, status=found.status, date=found.day.isoformat(), tables=found.tables,
                     tenantId=found.tenant_id, files=[ExportFileOut(**f) for f in found.files],
                     manifest=manifest_path(found.day, found.tenant_id), error=found.error,
                     startedAt=found.started_at, finishedAt=found.finished_at)


def _scope(requested: str | None) -> tuple[str | None, str]:
    """(tenant the export covers, who asked): the operator's covers every tenant or the one it names; a
    tenant's billing.manage token covers its own rows only."""
    principal = authenticate(MANAGE)
    if ADMIN in principal.capabilities:
        return requested, principal.subject
    if requested is not None and requested != principal.tenant_id:
        raise ApiError("forbidden", "only a billing.admin token may name another tenant", {"field": "tenantId"})
    return principal.tenant_id, principal.subject


@billing.post("/exports")
@documented({202: ExportStartedResponse}, 403, 503, json=ExportRequest)
@rate_limited(MANAGE)
def post_export() -> Response:
    """Export a UTC day (default: yesterday) of `tables` (default: all) as Parquet under EXPORT_URL,
    with a manifest; a worker writes it (follow GET /exports/<id>). Running a day again replaces its
    files. billing.admin: every tenant, or `tenantId`; billing.manage: the tenant's own rows only."""
    command = parse(ExportRequest, json_body())
    tenant_id, requested_by = _scope(command.tenantId)
    with unit_of_work() as uow:
        started = runs.start(uow, command, tenant_id=tenant_id, requested_by=requested_by)
    try:
        export_day.apply_async(args=[str(started.id)], retry=False)
    except BROKER_ERRORS as exc:
        log.warning("broker unavailable, export not started", export_id=str(started.id), error=str(exc))
        raise ApiError("unavailable", "the export could not be queued; try again") from exc
    return ok(ExportStartedResponse, status=202, export=ExportStarted(id=started.id, status=started.status))


@billing.get("/exports/<export_id>")
@documented({200: ExportResponse}, 403, 404)
@rate_limited(MANAGE)
def get_export(export_id: str) -> Response:
    """An export run with its files (path, rows, sha256). A tenant's token sees its own exports only."""
    principal = authenticate(MANAGE)
    scoped = None if ADMIN in principal.capabilities else principal.tenant_id
    with unit_of_work() as uow:
        found = runs.get(uow, path_uuid(export_id, "export"), tenant_id=scoped)
    return ok(ExportResponse, export=export_out(found))
