"""Links that open the pages: POST /portal-sessions (a tenant's admin for itself, or billing.admin
naming a tenant), POST /console-sessions (billing.admin), and their revocation."""
from __future__ import annotations

from typing import Annotated, Literal

from flask import Response, request, url_for
from pydantic import Field

from billing_core.access import sessions
from billing_core.fields import Strict, TenantId
from web.api.answers import Answer, TenantQuery, Timestamp, Uuid, ok
from web.api.routing import billing, documented
from web.auth import ADMIN, MANAGE, authenticate, managed_tenant
from web.limits import rate_limited
from web.pages.common import public_url
from web.parsing import json_body, parse, parse_query, path_uuid
from web.runtime import unit_of_work

TtlMinutes = Annotated[int, Field(ge=1, le=sessions.MAX_TTL_MINUTES, strict=True,
                                  description=f"default {sessions.DEFAULT_TTL_MINUTES}")]


class PortalSessionRequest(Strict):
    ttlMinutes: TtlMinutes = sessions.DEFAULT_TTL_MINUTES
    tenantId: TenantId | None = None


class ConsoleSessionRequest(Strict):
    ttlMinutes: TtlMinutes = sessions.DEFAULT_TTL_MINUTES


class SessionOut(Answer):
    id: Uuid = Field(description="for DELETE /portal-sessions/<id> or /console-sessions/<id>")
    url: str = Field(description="opens the pages in a browser with no other credential, once: its first opening "
                                 "exchanges it for a session of its own; keep it secret")
    expiresAt: Timestamp


class PortalSessionResponse(Answer):
    success: Literal[True]
    portalSession: SessionOut


class ConsoleSessionResponse(Answer):
    success: Literal[True]
    consoleSession: SessionOut


class RevokedResponse(Answer):
    success: Literal[True]
    revoked: Uuid


def _optional_body() -> dict:
    return json_body() if request.get_data(cache=True).strip() else {}


def _session_out(new: sessions.NewSession, endpoint: str) -> SessionOut:
    # the service's own address (LAD_PUBLIC_URL), never the Host header it was asked with
    return SessionOut(id=new.id, url=public_url() + url_for(endpoint, token=new.token), expiresAt=new.expires_at)


@billing.post("/portal-sessions")
@documented({200: PortalSessionResponse}, 404, 403, json=PortalSessionRequest)
@rate_limited(MANAGE)
def post_portal_session() -> Response:
    """A link to the tenant's billing portal (embeddable in an iframe where PORTAL_FRAME_ANCESTORS allows),
    valid ttlMinutes (default 60, at most 720). billing.manage for its own tenant; billing.admin may name any."""
    command = parse(PortalSessionRequest, _optional_body())
    principal, tenant_id = managed_tenant(command.tenantId)
    with unit_of_work() as uow:
        new = sessions.create_portal_session(uow, tenant_id, ttl_minutes=command.ttlMinutes,
                                             created_by=principal.subject)
    return ok(PortalSessionResponse, portalSession=_session_out(new, "portal.open"))


@billing.delete("/portal-sessions/<session_id>")
@documented({200: RevokedResponse}, 403, 404, query=TenantQuery)
@rate_limited(MANAGE)
def delete_portal_session(session_id: str) -> Response:
    """Revoke a portal session: its link and its browser session stop working at once."""
    _, tenant_id = managed_tenant(parse_query(TenantQuery).tenantId)
    wanted = path_uuid(session_id, "portal session")
    with unit_of_work() as uow:
        sessions.revoke_portal_session(uow, tenant_id, wanted)
    return ok(RevokedResponse, revoked=wanted)


@billing.post("/console-sessions")
@documented({200: ConsoleSessionResponse}, 403, json=ConsoleSessionRequest)
@rate_limited(ADMIN)
def post_console_session() -> Response:
    """A link to the operators' console (every tenant), valid ttlMinutes (default 60, at most 720)."""
    principal = authenticate(ADMIN)
    command = parse(ConsoleSessionRequest, _optional_body())
    with unit_of_work() as uow:
        new = sessions.create_console_session(uow, ttl_minutes=command.ttlMinutes, created_by=principal.subject)
    return ok(ConsoleSessionResponse, consoleSession=_session_out(new, "console.open"))


@billing.delete("/console-sessions/<session_id>")
@documented({200: RevokedResponse}, 403, 404)
@rate_limited(ADMIN)
def delete_console_session(session_id: str) -> Response:
    authenticate(ADMIN)
    wanted = path_uuid(session_id, "console session")
    with unit_of_work() as uow:
        sessions.revoke_console_session(uow, wanted)
    return ok(RevokedResponse, revoked=wanted)
