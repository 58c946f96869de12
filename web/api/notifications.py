"""Low-balance alert settings and the notification log under /api/billing (billing.manage for its own
tenant, billing.admin for any; operator notifications billing.admin only).
Handlers parse, call billing_core, and answer."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from flask import Response
from pydantic import Field

from billing_core import logs
from billing_core.errors import NotFound
from billing_core.fields import TenantId
from billing_core.notifications import alerts, outbox
from billing_core.notifications.alerts import AlertSettingsRequest
from tasks.notifications import check_balance_alerts
from web.api.answers import Answer, DecimalString, Query, TenantQuery, Timestamp, Uuid, ok
from web.api.routing import BROKER_ERRORS, billing, documented
from web.auth import ADMIN, MANAGE, authenticate, managed_tenant
from web.limits import rate_limited
from web.parsing import json_body, parse, parse_query, path_uuid
from web.runtime import unit_of_work

log = logs.get(__name__)

# --- query and response models --------------------------------------------------------------------

EventType = Literal["balance.low", "balance.depleted", "invoice.finalized", "budget.exceeded",
                    "reconciliation.mismatch", "auto_topup.failed", "auto_topup.capped", "wallet.in_debt",
                    "wallet.debt_repaid", "usage.corrected"]


class NotificationsQuery(Query):
    status: Literal["pending", "delivered", "failed"] | None = None
    type: EventType | None = None
    channel: Literal["webhook", "email"] | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str, Field(max_length=200)] | None = None
    # true: the operators' notifications (reconciliation), which belong to no tenant
    operator: bool = False
    tenantId: TenantId | None = None


class AlertStateOut(Answer):
    threshold: DecimalString
    eventType: Literal["balance.low", "balance.depleted"]
    armed: bool
    firedCount: int
    lastFiredAt: Timestamp | None
    lastRearmedAt: Timestamp | None


class AlertSettingsOut(Answer):
    tenantId: str
    thresholds: list[DecimalString]
    webhookUrl: str | None
    webhookSecret: str
    email: str | None
    states: list[AlertStateOut]
    createdAt: Timestamp
    updatedAt: Timestamp


class AlertSettingsResponse(Answer):
    success: Literal[True]
    alerts: AlertSettingsOut


class AttemptOut(Answer):
    attempt: int
    startedAt: Timestamp
    durationMs: int | None
    outcome: Literal["delivered", "retry", "failed", "abandoned"]
    httpStatus: int | None
    smtpResult: str | None
    error: str | None


class NotificationOut(Answer):
    id: Uuid
    tenantId: str | None
    type: EventType
    channel: Literal["webhook", "email"]
    destination: str
    status: Literal["pending", "delivered", "failed"]
    attemptCount: int
    nextAttemptAt: Timestamp | None
    lastError: str | None
    createdAt: Timestamp
    deliveredAt: Timestamp | None
    failedAt: Timestamp | None
    payload: dict[str, Any]
    attempts: list[AttemptOut]


class NotificationsResponse(Answer):
    success: Literal[True]
    notifications: list[NotificationOut]
    nextCursor: str | None


class NotificationResponse(Answer):
    success: Literal[True]
    notification: NotificationOut


# --- representations ------------------------------------------------------------------------------


def alert_settings_out(s: alerts.AlertSettings) -> AlertSettingsOut:
    return AlertSettingsOut(
        tenantId=s.tenant_id, thresholds=s.thresholds, webhookUrl=s.webhook_url, webhookSecret=s.webhook_secret,
        email=s.email,
        states=[AlertStateOut(threshold=st.threshold, eventType=st.event_type, armed=st.armed,
                              firedCount=st.fired_count, lastFiredAt=st.last_fired_at,
                              lastRearmedAt=st.last_rearmed_at) for st in s.states],
        createdAt=s.created_at, updatedAt=s.updated_at)


def notification_out(n: outbox.Notification) -> NotificationOut:
    return NotificationOut(
        id=n.id, tenantId=n.tenant_id, type=n.event_type, channel=n.channel, destination=n.destination,
        status=n.status, attemptCount=n.attempts,
        nextAttemptAt=n.next_attempt_at if n.status == outbox.PENDING else None, lastError=n.last_error,
        createdAt=n.created_at, deliveredAt=n.delivered_at, failedAt=n.failed_at, payload=n.payload,
        attempts=[AttemptOut(attempt=a.attempt, startedAt=a.started_at, durationMs=a.duration_ms, outcome=a.outcome,
                             httpStatus=a.http_status, smtpResult=a.smtp_result, error=a.error)
                  for a in n.attempt_log])


# --- routes ---------------------------------------------------------------------------------------


@billing.put("/settings/alerts")
@documented({200: AlertSettingsResponse}, 404, 403, json=AlertSettingsRequest)
@rate_limited(MANAGE)
def put_alertsettings() -> Response:
    """Low-balance alerts: thresholds on the available balance (balance minus holds), a webhook
    (signed with webhookSecret, generated when not given) and/or an e-mail address. An alert fires
    once when the available balance is at or below a threshold (0: balance.depleted, others:
    balance.low) and re-arms when it is above the threshold again."""
    command = parse(AlertSettingsRequest, json_body())
    _, tenant_id = managed_tenant(command.tenantId)
    with unit_of_work() as uow:
        found = alerts.put_settings(uow, tenant_id, command)
    _check_soon(tenant_id)
    return ok(AlertSettingsResponse, alerts=alert_settings_out(found))


def _check_soon(tenant_id: str) -> None:
    """New thresholds are judged at once, not at the next scan."""
    try:
        check_balance_alerts.apply_async(args=[tenant_id], retry=False)
    except BROKER_ERRORS as exc:  # the beat scan evaluates it within a minute
        log.warning("broker unavailable, alerts left for the beat scan", tenant_id=tenant_id, error=str(exc))


@billing.get("/settings/alerts")
@documented({200: AlertSettingsResponse}, 403, 404, query=TenantQuery)
@rate_limited(MANAGE)
def get_alertsettings() -> Response:
    """The tenant's alert settings (with the webhook secret: its billing.manage holders and the
    platform operator only) and each threshold's state."""
    _, tenant_id = managed_tenant(parse_query(TenantQuery).tenantId)
    with unit_of_work() as uow:
        found = alerts.get_settings(uow, tenant_id)
    if found is None:
        raise NotFound("no alert settings for this tenant")
    return ok(AlertSettingsResponse, alerts=alert_settings_out(found))


@billing.get("/notifications")
@documented({200: NotificationsResponse}, 404, 403, query=NotificationsQuery)
@rate_limited(MANAGE)
def get_notifications() -> Response:
    """Notifications newest first, each with every delivery attempt (HTTP status or SMTP reply,
    error, duration). `operator=true` lists the operators' (tenant-less) notifications (billing.admin)."""
    query = parse_query(NotificationsQuery)
    if query.operator:
        authenticate(ADMIN)
        tenant_id = None
    else:
        _, tenant_id = managed_tenant(query.tenantId)
    with unit_of_work() as uow:
        found, next_cursor = outbox.list_notifications(
            uow, tenant_id, status=query.status, event_type=query.type, channel=query.channel, limit=query.limit,
            cursor=query.cursor)
    return ok(NotificationsResponse, notifications=[notification_out(n) for n in found], nextCursor=next_cursor)


@billing.get("/notifications/<notification_id>")
@documented({200: NotificationResponse}, 403, 404, query=TenantQuery)
@rate_limited(MANAGE)
def get_notification(notification_id: str) -> Response:
    _, tenant_id = managed_tenant(parse_query(TenantQuery).tenantId)
    wanted = path_uuid(notification_id, "notification")
    with unit_of_work() as uow:
        found, _ = outbox.list_notifications(uow, tenant_id, ids=[wanted], limit=1)
    if not found:
        raise NotFound(f"notification {notification_id} not found")
    return ok(NotificationResponse, notification=notification_out(found[0]))
