"""Notifications: events for a tenant (or for the operators) delivered by webhook or e-mail, each
attempt recorded.

Life of a notification (one row per event and channel):
- `enqueue(uow, tenant_id, event_type, payload)` writes one row per channel the tenant configured
  (alert settings: webhook URL, e-mail; operator events, tenant_id None: OPERATOR_* variables), in the
  caller's transaction. After the commit the caller sends the delivery messages
  (tasks.notifications.dispatch); a message that never goes out is sent by the sweep.
- `deliver(...)` claims the row with a lease (a short transaction holding its row lock), sends
  without any transaction open, then records the attempt and the outcome under that lease:
  2xx delivered; 408, 429, 5xx, timeouts and network errors retried with exponential backoff and
  jitter until the horizon (24 hours by default) has passed since the event; any other status
  failed at once. E-mail: SMTP 4xx replies and connection errors retried, 5xx failed.
- `claim_lost(...)` (the sweep, every minute) finds pending rows that are due, unleased, and whose
  last message is older than a grace period, and marks them enqueued for a new message.

Delivery is at least once: a worker that dies after the receiver answered but before the outcome
was recorded leaves the lease to expire and the event is sent again (same event id; receivers
de-duplicate on it). Two deliveries of one notification never run at the same time.

Webhook requests are signed: `LAD-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
keyed with the tenant's webhook secret (see `signature_header`).
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import random
import smtplib
import ssl
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import (
    insert,
    select,
    text,
    update,
)

from billing_core import exactjson, money
from billing_core.bootstrap import Settings, settings
from billing_core.cursors import newest_first, next_cursor
from billing_core.db import UnitOfWork, insert_rows
from billing_core.notifications import destinations as webhook_destinations
from billing_core.notifications.tables import notification_attempts, notifications

EVENT_TYPES = ("balance.low", "balance.depleted", "invoice.finalized", "budget.exceeded", "reconciliation.mismatch",
               "auto_topup.failed", "auto_topup.capped", "wallet.in_debt", "wallet.debt_repaid",
               "usage.corrected")
WEBHOOK, EMAIL = "webhook", "email"
CHANNELS = (WEBHOOK, EMAIL)
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
SIGNATURE_HEADER = "LAD-Signature"
USER_AGENT = "LAD-Billing-Webhooks/1.0"
# a claimed delivery must finish within this (HTTP and SMTP timeouts are far shorter; the Celery
# hard time limit is 60 s); after it another worker may take the notification over
LEASE_SECONDS = 120
# a retry due within this is sent as a delayed message; a later one is left to the sweep, so no
# message waits in the broker longer than its visibility timeout
MAX_COUNTDOWN_MS = 60_000
MAX_ERROR_LENGTH = 500
MAX_RESPONSE_EXCERPT_BYTES = 200
MAX_ATTEMPTS_SHOWN = 100


# --- settings -------------------------------------------------------------------------------------



@dataclass(frozen=True)
class OperatorSettings:
    """Where tenant-less operator events (reconciliation.mismatch) go."""
    webhook_url: str | None = None
    webhook_secret: str | None = None
    email: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> OperatorSettings:
        return cls(webhook_url=settings.operator_webhook_url, webhook_secret=settings.operator_webhook_secret,
                   email=settings.operator_email)


@dataclass(frozen=True)
class NotificationSettings:
    retry_base_ms: int = 30_000           # NOTIFICATION_RETRY_BASE_SECONDS
    retry_max_delay_ms: int = 3_600_000   # NOTIFICATION_RETRY_MAX_DELAY_SECONDS
    retry_horizon_ms: int = 86_400_000    # NOTIFICATION_RETRY_HORIZON_SECONDS
    sweep_grace_ms: int = 60_000          # NOTIFICATION_SWEEP_GRACE_SECONDS
    http_timeout_seconds: int = 10        # NOTIFICATION_HTTP_TIMEOUT_SECONDS (connect and read)
    smtp_url: str | None = None           # SMTP_URL: smtp://[user:pass@]host[:port][?starttls=true] or smtps://
    smtp_from: str = "LAD Billing <billing@localhost>"  # SMTP_FROM
    smtp_timeout_seconds: int = 20
    operator: OperatorSettings = field(default_factory=OperatorSettings)
    allow_private_addresses: bool = False  # WEBHOOK_ALLOW_PRIVATE_ADDRESSES: the SSRF guard's opt-out

    @classmethod
    def of(cls, settings: Settings) -> NotificationSettings:
        def ms(seconds: Decimal) -> int:
            return int(seconds * 1000)
        return cls(
            retry_base_ms=max(1, ms(settings.notification_retry_base_seconds)),
            retry_max_delay_ms=max(1, ms(settings.notification_retry_max_delay_seconds)),
            retry_horizon_ms=ms(settings.notification_retry_horizon_seconds),
            sweep_grace_ms=ms(settings.notification_sweep_grace_seconds),
            http_timeout_seconds=settings.notification_http_timeout_seconds,
            smtp_url=settings.smtp_url,
            smtp_from=settings.smtp_from,
            operator=OperatorSettings.of(settings),
            allow_private_addresses=settings.webhook_allow_private_addresses,
        )


def backoff_ms(attempt: int, settings: NotificationSettings) -> int:
    """Delay after failed attempt `attempt` (1-based): base·2^(attempt−1), capped, with "equal
    jitter" (a uniformly random point in the upper half), so failed receivers are not hit in step."""
    ceiling = min(settings.retry_max_delay_ms, settings.retry_base_ms * 2 ** min(max(attempt - 1, 0), 40))
    half = ceiling // 2
    return max(1, half + random.randint(0, ceiling - half))


# --- enqueueing -----------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Amounts as normalized decimal strings, times as ISO 8601 UTC, ids as strings."""
    if isinstance(value, Decimal):
        return money.format_decimal(value)
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def destinations(uow: UnitOfWork, tenant_id: str | None,
                 operator: OperatorSettings | None = None) -> list[tuple[str, str]]:
    """(channel, destination) pairs the tenant's events go to; the operators' for tenant None."""
    if tenant_id is None:
        operator = operator or OperatorSettings.of(settings())
        url, email = operator.webhook_url, operator.email
    else:
        row = uow.connection.execute(
            text("SELECT webhook_url, email FROM alert_settings WHERE tenant_id = :t"), {"t": tenant_id}
        ).one_or_none()
        url, email = (row.webhook_url, row.email) if row else (None, None)
    found = []
    if url:
        found.append((WEBHOOK, url))
    if email:
        found.append((EMAIL, email))
    return found


@dataclass(frozen=True)
class NewNotification:
    tenant_id: str | None
    event_type: str
    payload: dict[str, Any]
    channel: str
    destination: str


def enqueue(uow: UnitOfWork, tenant_id: str | None, event_type: str, payload: dict[str, Any], *,
            operator: OperatorSettings | None = None) -> list[uuid.UUID]:
    """One notification per channel configured for the tenant (for tenant None: the operators'),
    written in the caller's transaction (no commit). Returns their ids, to pass to
    tasks.notifications.dispatch after the commit; none when nothing is configured."""
    return insert_notifications(uow, [
        NewNotification(tenant_id, event_type, payload, channel, destination)
        for channel, destination in destinations(uow, tenant_id, operator)
    ])


def insert_notifications(uow: UnitOfWork, new: Iterable[NewNotification]) -> list[uuid.UUID]:
    rows = []
    now = None
    for item in new:
        if item.event_type not in EVENT_TYPES:
            raise ValueError(f"unknown notification event type {item.event_type!r}")
        if item.channel not in CHANNELS:
            raise ValueError(f"unknown notification channel {item.channel!r}")
        now = now or uow.now()
        rows.append({"id": uuid.uuid4(), "tenant_id": item.tenant_id, "event_type": item.event_type,
                     "payload": _jsonable(item.payload), "channel": item.channel,
                     "destination": item.destination, "status": PENDING, "attempts": 0,
                     "next_attempt_at": now, "enqueued_at": now, "created_at": now})
    insert_rows(uow, notifications, rows)
    return [row["id"] for row in rows]


# --- the event as sent ----------------------------------------------------------------------------


def envelope(notification_id: uuid.UUID, event_type: str, tenant_id: str | None, created_at: datetime,
             payload: dict[str, Any]) -> dict[str, Any]:
    """The JSON document a webhook receives (the same on every attempt)."""
    return {"id": str(notification_id), "type": event_type, "createdAt": iso(created_at),
            "tenantId": tenant_id, "data": payload}


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


# --- claiming and recording -----------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    id: uuid.UUID
    tenant_id: str | None
    event_type: str
    payload: dict[str, Any]
    channel: str
    destination: str
    attempt: int  # the number of this attempt, 1-based
    created_at: datetime
    started_at: datetime
    lease_token: uuid.UUID
    secret: str | None


@dataclass(frozen=True)
class Skipped:
    reason: str  # missing | done | stale | leased | not_due
    retry_in_ms: int | None = None
    expected_attempts: int | None = None


def claim(uow: UnitOfWork, notification_id: uuid.UUID, expected_attempts: int | None,
          settings: NotificationSettings) -> Claimed | Skipped:
    """Take the lease on a due, pending notification and commit. `expected_attempts` is the attempt
    count the message was sent for: a message that is out of date (another one made an attempt
    since) is dropped, so duplicate messages never turn into parallel retry chains."""
    # by primary key across tenants: the message names the notification only (a housekeeping path)
    row = uow.connection.execute(
        select(notifications).where(notifications.c.id == notification_id).with_for_update()
    ).one_or_none()
    if row is None:
        return Skipped("missing")
    now = uow.now()
    if row.status != PENDING:
        return Skipped("done")
    if expected_attempts is not None and row.attempts != expected_attempts:
        return Skipped("stale")
    if row.lease_until is not None and row.lease_until > now:
        return Skipped("leased")
    if row.next_attempt_at > now:
        remaining = (row.next_attempt_at - now) // timedelta(milliseconds=1) + 1
        return Skipped("not_due", retry_in_ms=remaining, expected_attempts=row.attempts)
    if row.lease_until is not None and not _attempt_recorded(uow, row.id, row.attempts):
        # the previous claimer's lease ran out before it recorded anything: its worker died
        uow.connection.execute(insert(notification_attempts).values(
            tenant_id=row.tenant_id, notification_id=row.id, attempt=row.attempts,
            started_at=row.lease_until - timedelta(seconds=LEASE_SECONDS), outcome="abandoned",
            error="the delivering worker stopped before recording an outcome (lease expired)"))
    token = uuid.uuid4()
    attempt = row.attempts + 1
    uow.connection.execute(
        update(notifications).where(notifications.c.id == row.id)
        .values(attempts=attempt, lease_until=now + timedelta(seconds=LEASE_SECONDS), lease_token=token)
    )
    secret = _secret(uow, row.tenant_id, settings) if row.channel == WEBHOOK else None
    uow.commit()
    return Claimed(id=row.id, tenant_id=row.tenant_id, event_type=row.event_type, payload=row.payload,
                   channel=row.channel, destination=row.destination, attempt=attempt, created_at=row.created_at,
                   started_at=now, lease_token=token, secret=secret)


def _attempt_recorded(uow: UnitOfWork, notification_id: uuid.UUID, attempt: int) -> bool:
    return attempt < 1 or uow.connection.execute(
        select(notification_attempts.c.attempt).where(notification_attempts.c.notification_id == notification_id,
                                                      notification_attempts.c.attempt == attempt)
    ).first() is not None


def _secret(uow: UnitOfWork, tenant_id: str | None, settings: NotificationSettings) -> str | None:
    """The signing secret as it is now (a rotated secret signs the retries of older events)."""
    if tenant_id is None:
        return settings.operator.webhook_secret
    return uow.connection.execute(
        text("SELECT webhook_secret FROM alert_settings WHERE tenant_id = :t"), {"t": tenant_id}
    ).scalar_one_or_none()


@dataclass(frozen=True)
class SendResult:
    ok: bool
    retryable: bool = False
    http_status: int | None = None
    smtp_result: str | None = None
    error: str | None = None
    retry_after_ms: int | None = None  # a 429/503 receiver's Retry-After


@dataclass(frozen=True)
class DeliveryOutcome:
    status: str  # delivered | failed | pending (a retry is scheduled) | lost (lease) | a Skipped reason
    attempt: int | None = None
    retry_in_ms: int | None = None  # send the next message this much later (None: the sweep will)
    expected_attempts: int | None = None
    event_type: str | None = None  # of the notification attempted (None when skipped)
    channel: str | None = None


def record(uow: UnitOfWork, claimed: Claimed, result: SendResult, duration_ms: int,
           settings: NotificationSettings) -> DeliveryOutcome:
    """Record the attempt and the notification's new state, if the lease is still ours; commit."""
    now = uow.now()
    values: dict[str, Any] = {"lease_until": None, "lease_token": None}
    retry_in_ms = None
    error = _clip(result.error)
    if result.ok:
        status, outcome = DELIVERED, "delivered"
        values.update(status=DELIVERED, delivered_at=now, last_error=None)
    elif not result.retryable:
        status, outcome = FAILED, "failed"
        values.update(status=FAILED, failed_at=now, last_error=error)
    else:
        delay = backoff_ms(claimed.attempt, settings)
        if result.retry_after_ms is not None:
            delay = max(delay, min(result.retry_after_ms, settings.retry_max_delay_ms))
        next_at = now + timedelta(milliseconds=delay)
        if next_at > claimed.created_at + timedelta(milliseconds=settings.retry_horizon_ms):
            status, outcome = FAILED, "failed"
            error = _clip(f"{error}; gave up after {claimed.attempt} attempts")
            values.update(status=FAILED, failed_at=now, last_error=error)
        else:
            status, outcome = PENDING, "retry"
            values.update(next_attempt_at=next_at, last_error=error)
            if delay <= MAX_COUNTDOWN_MS:
                retry_in_ms = delay
                values["enqueued_at"] = now
    uow.connection.execute(
        text("INSERT INTO notification_attempts (tenant_id, notification_id, attempt, started_at, duration_ms, "
             "outcome, http_status, smtp_result, error) VALUES (:tenant_id, :notification_id, :attempt, "
             ":started_at, :duration_ms, :outcome, :http_status, :smtp_result, :error) ON CONFLICT DO NOTHING"),
        {"tenant_id": claimed.tenant_id, "notification_id": claimed.id, "attempt": claimed.attempt,
         "started_at": claimed.started_at, "duration_ms": duration_ms, "outcome": outcome,
         "http_status": result.http_status, "smtp_result": _clip(result.smtp_result), "error": error},
    )
    updated = uow.connection.execute(
        update(notifications)
        .where(notifications.c.id == claimed.id, notifications.c.lease_token == claimed.lease_token)
        .values(**values).returning(notifications.c.id)
    ).first()
    uow.commit()
    if updated is None:  # our lease ran out and another worker took the notification over
        return DeliveryOutcome("lost", claimed.attempt, event_type=claimed.event_type, channel=claimed.channel)
    return DeliveryOutcome(status, claimed.attempt, retry_in_ms, claimed.attempt if retry_in_ms is not None else None,
                           event_type=claimed.event_type, channel=claimed.channel)


def _clip(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.replace("\x00", "")
    return value if len(value) <= MAX_ERROR_LENGTH else value[:MAX_ERROR_LENGTH - 1] + "…"


def deliver(new_uow: Callable[[], UnitOfWork], notification_id: uuid.UUID, expected_attempts: int | None,
            settings: NotificationSettings) -> DeliveryOutcome:
    """One delivery attempt, if the notification is due and nobody else is delivering it."""
    with new_uow() as uow:
        claimed = claim(uow, notification_id, expected_attempts, settings)
    if isinstance(claimed, Skipped):
        # only the message a retry chain expects reschedules itself: duplicates just end
        keep = claimed.reason == "not_due" and expected_attempts is not None
        return DeliveryOutcome(claimed.reason, retry_in_ms=claimed.retry_in_ms if keep else None,
                               expected_attempts=claimed.expected_attempts if keep else None)
    started = time.monotonic_ns()
    try:
        result = send(claimed, settings)
    except Exception as exc:  # anything unforeseen is recorded and retried, never lost
        result = SendResult(ok=False, retryable=True, error=f"{type(exc).__name__}: {exc}")
    duration_ms = (time.monotonic_ns() - started) // 1_000_000
    with new_uow() as uow:
        return record(uow, claimed, result, duration_ms, settings)


# --- sending --------------------------------------------------------------------------------------


def send(claimed: Claimed, settings: NotificationSettings) -> SendResult:
    if claimed.channel == WEBHOOK:
        if not claimed.secret:
            return SendResult(ok=False, error="no webhook signing secret is configured"
                              + (" (OPERATOR_WEBHOOK_SECRET)" if claimed.tenant_id is None else ""))
        body = exactjson.dumps(envelope(claimed.id, claimed.event_type, claimed.tenant_id, claimed.created_at,
                                        claimed.payload)).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "LAD-Event-Id": str(claimed.id),
            "LAD-Event-Type": claimed.event_type,
            "LAD-Delivery-Attempt": str(claimed.attempt),
            SIGNATURE_HEADER: signature_header(claimed.secret, body, int(time.time())),
        }
        return post_webhook(claimed.destination, body, headers, settings.http_timeout_seconds,
                            allow_private_addresses=settings.allow_private_addresses)
    if not settings.smtp_url:
        return SendResult(ok=False, error="e-mail is not configured (SMTP_URL)")
    subject, body_text = render_email(claimed.event_type, claimed.tenant_id, claimed.payload, claimed.id,
                                      claimed.created_at)
    return send_email(settings, claimed.destination, subject, body_text,
                      {"LAD-Event-Id": str(claimed.id), "LAD-Event-Type": claimed.event_type})


def retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def post_webhook(url: str, body: bytes, headers: dict[str, str], timeout_seconds: int, *,
                 allow_private_addresses: bool = False) -> SendResult:
    """POST without following redirects. 2xx delivered; 408, 429 and 5xx retryable; any other
    status (3xx, 4xx) failed; timeouts and connection errors retryable."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError("not an http(s) URL")
    except ValueError as exc:
        return SendResult(ok=False, error=f"invalid webhook URL: {exc}")
    port = port or (443 if parts.scheme == "https" else 80)
    destination = webhook_destinations.resolve(host, port, allow_private_addresses)
    if destination.address is None:
        return SendResult(ok=False, retryable=destination.retryable, error=destination.refused)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout_seconds, context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_seconds)
    webhook_destinations.pin(connection, destination.address)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        # a failure keeps its status and at most this much of the body, never the response headers
        excerpt = response.read(MAX_RESPONSE_EXCERPT_BYTES).decode("utf-8", errors="replace").strip()
        status = response.status
        retry_after = response.getheader("Retry-After")
    except (OSError, http.client.HTTPException) as exc:
        return SendResult(ok=False, retryable=True, error=f"{type(exc).__name__}: {exc}".rstrip(": "))
    finally:
        connection.close()
    if 200 <= status < 300:
        return SendResult(ok=True, http_status=status)
    error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    retry_after_ms = int(retry_after) * 1000 if retry_after and retry_after.strip().isdigit() else None
    return SendResult(ok=False, retryable=retryable_status(status), http_status=status, error=error,
                      retry_after_ms=retry_after_ms)


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    implicit_tls: bool
    starttls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://[user:pass@]host[:port] or smtps://...")
        query = parse_qs(parts.query)
        starttls = query.get("starttls", ["false"])[0].lower() in ("1", "true", "yes")
        return cls(host=parts.hostname, port=parts.port or (465 if parts.scheme == "smtps" else 25),
                   implicit_tls=parts.scheme == "smtps", starttls=starttls,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None)


def send_email(settings: NotificationSettings, to: str, subject: str, body: str,
               headers: dict[str, str] | None = None) -> SendResult:
    """One plain-text message over SMTP. SMTP 4xx replies and connection errors are retryable, 5xx
    replies are not. The server's final reply is kept as the attempt's smtp_result."""
    try:
        server = SmtpServer.parse(settings.smtp_url or "")
    except ValueError as exc:
        return SendResult(ok=False, error=str(exc))
    sender = parseaddr(settings.smtp_from)[1] or settings.smtp_from
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    try:
        smtp: smtplib.SMTP
        if server.implicit_tls:
            smtp = smtplib.SMTP_SSL(server.host, server.port, timeout=settings.smtp_timeout_seconds,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(server.host, server.port, timeout=settings.smtp_timeout_seconds)
        with smtp:
            smtp.ehlo()
            if server.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if server.username:
                smtp.login(server.username, server.password or "")
            code, reply = smtp.mail(sender)
            if code != 250:
                return _smtp_refused("MAIL FROM", code, reply)
            code, reply = smtp.rcpt(to)
            if code not in (250, 251):
                return _smtp_refused("RCPT TO", code, reply)
            code, reply = smtp.data(message.as_bytes())
            if code != 250:
                return _smtp_refused("DATA", code, reply)
            return SendResult(ok=True, smtp_result=f"{code} {reply.decode('utf-8', errors='replace')}")
    except smtplib.SMTPResponseException as exc:
        text_reply = exc.smtp_error.decode("utf-8", errors="replace") if isinstance(exc.smtp_error, bytes) \
            else str(exc.smtp_error)
        return SendResult(ok=False, retryable=not 500 <= exc.smtp_code < 600,
                          smtp_result=f"{exc.smtp_code} {text_reply}",
                          error=f"{type(exc).__name__}: {exc.smtp_code} {text_reply}")
    except (smtplib.SMTPException, OSError) as exc:
        return SendResult(ok=False, retryable=True, error=f"{type(exc).__name__}: {exc}".rstrip(": "))


def _smtp_refused(step: str, code: int, reply: bytes) -> SendResult:
    result = f"{code} {reply.decode('utf-8', errors='replace')}"
    return SendResult(ok=False, retryable=not 500 <= code < 600, smtp_result=result,
                      error=f"{step} refused: {result}")


_SUBJECTS = {
    "balance.low": "Low balance: {availableBalance} {currency} available (alert at {threshold})",
    "balance.depleted": "Balance depleted: {availableBalance} {currency} available",
    "invoice.finalized": "Invoice {period} is ready",
    "budget.exceeded": "Budget exceeded for {featureKey}",
    "reconciliation.mismatch": "Ledger reconciliation found a mismatch",
    "auto_topup.failed": "Auto top-up failed ({failureCode}); it is turned off",
    "auto_topup.capped": "Auto top-up reached this month's limit ({maxPerMonth})",
    "wallet.in_debt": "Your wallet is in debt ({balance}): new calls are refused",
    "wallet.debt_repaid": "Your wallet's debt is repaid: new calls are admitted again",
    "usage.corrected": "Your usage was re-rated: {difference} {currency} (positive: credited back)",
}

_INTROS = {
    "balance.low": "The available balance (balance minus active holds) of your LAD Billing wallet is at or "
                   "below the alert threshold you set. Top up to keep your services running.",
    "balance.depleted": "The available balance of your LAD Billing wallet is used up: new charges and holds "
                        "will be refused until you top up.",
    "invoice.finalized": "Your LAD Billing invoice has been finalized.",
    "budget.exceeded": "A feature's spend went over the budget you set.",
    "reconciliation.mismatch": "The hourly reconciliation found ledger entries, balances or pending events that "
                               "do not agree. Nothing was changed; please investigate.",
    "auto_topup.failed": "An automatic top-up of your LAD Billing wallet could not be paid. Auto top-up is turned off "
                         "until an administrator turns it on again; no credits were added.",
    "auto_topup.capped": "Your LAD Billing wallet is at or below its auto top-up threshold, but another top-up "
                         "would pass the monthly limit you set. No payment was made.",
    "wallet.in_debt": "A call settled for more than your LAD Billing wallet held: it was charged in full and the "
                      "balance is below zero. New calls are refused until a top-up repays the debt.",
    "wallet.debt_repaid": "A credit repaid your LAD Billing wallet's debt: new calls are admitted again.",
    "usage.corrected": "A price of the catalog was corrected, and your usage in the period was re-rated at the "
                       "corrected price. The difference is one correction entry in your ledger.",
}


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def render_email(event_type: str, tenant_id: str | None, payload: dict[str, Any], notification_id: uuid.UUID,
                 created_at: datetime) -> tuple[str, str]:
    """Subject and plain-text body of an event's e-mail."""
    fields = _Blank({k: v for k, v in payload.items() if isinstance(v, (str, int))})
    fields.setdefault("currency", "")
    subject = "[LAD Billing] " + _SUBJECTS.get(event_type, event_type).format_map(fields).replace("  ", " ")
    lines = [_INTROS.get(event_type, f"Event {event_type}."), ""]
    if tenant_id is not None:
        lines.append(f"Tenant: {tenant_id}")
    for key in sorted(payload):
        value = payload[key]
        if value is not None:
            lines.append(f"{key}: {value if isinstance(value, (str, int)) else exactjson.dumps(value)}")
    lines += ["", f"Event: {event_type} {notification_id}", f"Time: {iso(created_at)}"]
    return subject.replace("\r", " ").replace("\n", " "), "\n".join(lines) + "\n"


# --- the sweep ------------------------------------------------------------------------------------


def claim_lost(uow: UnitOfWork, settings: NotificationSettings, limit: int = 1000) -> list[tuple[uuid.UUID, int]]:
    """Pending notifications that are due, not leased, and whose last message went out longer than
    the grace period ago (lost, or a retry left to the sweep): mark them enqueued now and return
    (id, attempts) to send a message for each. Commits. Concurrent sweeps take disjoint rows."""
    rows = uow.connection.execute(text("""
        WITH due AS (
            SELECT id FROM notifications
            WHERE status = 'pending' AND next_attempt_at <= now()
              AND (lease_until IS NULL OR lease_until < now())
              AND enqueued_at <= now() - make_interval(secs => :grace)
            ORDER BY next_attempt_at
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        )
        UPDATE notifications n SET enqueued_at = now() FROM due WHERE n.id = due.id
        RETURNING n.id, n.attempts
    """), {"grace": Decimal(settings.sweep_grace_ms) / 1000, "limit": limit}).all()
    uow.commit()
    return [(row.id, row.attempts) for row in rows]


# --- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    attempt: int
    started_at: datetime
    duration_ms: int | None
    outcome: str
    http_status: int | None
    smtp_result: str | None
    error: str | None


@dataclass(frozen=True)
class Notification:
    id: uuid.UUID
    tenant_id: str | None
    event_type: str
    payload: dict[str, Any]
    channel: str
    destination: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    failed_at: datetime | None
    attempt_log: list[Attempt]


def list_notifications(uow: UnitOfWork, tenant_id: str | None, *, status: str | None = None,
                       event_type: str | None = None, channel: str | None = None, limit: int = 50,
                       cursor: str | None = None,
                       ids: list[uuid.UUID] | None = None) -> tuple[list[Notification], str | None]:
    """A page of the tenant's notifications (tenant None: the operators'), newest first, each with
    its attempts; and the next page's cursor."""
    tenant_condition = notifications.c.tenant_id.is_(None) if tenant_id is None \
        else notifications.c.tenant_id == tenant_id
    query = select(notifications).where(tenant_condition)
    if status is not None:
        query = query.where(notifications.c.status == status)
    if event_type is not None:
        query = query.where(notifications.c.event_type == event_type)
    if channel is not None:
        query = query.where(notifications.c.channel == channel)
    if ids is not None:
        query = query.where(notifications.c.id.in_(ids))
    rows = uow.connection.execute(newest_first(query, notifications, cursor, limit)).all()
    page = rows[:limit]
    attempts: dict[uuid.UUID, list[Attempt]] = {row.id: [] for row in page}
    if page:
        attempt_query = (
            select(notification_attempts)
            .where(notification_attempts.c.notification_id.in_(list(attempts)))
            .order_by(notification_attempts.c.notification_id, notification_attempts.c.attempt)
        )
        attempt_query = attempt_query.where(notification_attempts.c.tenant_id.is_(None) if tenant_id is None
                                            else notification_attempts.c.tenant_id == tenant_id)
        for a in uow.connection.execute(attempt_query):
            attempts[a.notification_id].append(Attempt(a.attempt, a.started_at, a.duration_ms, a.outcome,
                                                       a.http_status, a.smtp_result, a.error))
    found = [
        Notification(id=r.id, tenant_id=r.tenant_id, event_type=r.event_type, payload=r.payload, channel=r.channel,
                     destination=r.destination, status=r.status, attempts=r.attempts,
                     next_attempt_at=r.next_attempt_at, last_error=r.last_error, created_at=r.created_at,
                     delivered_at=r.delivered_at, failed_at=r.failed_at,
                     attempt_log=attempts[r.id][-MAX_ATTEMPTS_SHOWN:])
        for r in page
    ]
    return found, next_cursor(rows, limit)
