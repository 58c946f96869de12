"""Low-balance alerts: per-tenant thresholds on the available balance (balance minus active holds).

Semantics (hysteresis, per threshold T):
- an armed alert fires when the available balance is AT OR BELOW T (`available <= T`) and disarms;
  T = 0 gives `balance.depleted` (nothing left: "at or below zero", as the rate limiter counts a
  depleted wallet), any other T gives `balance.low`;
- it re-arms only when the available balance is ABOVE T again (`available > T`).
A new threshold starts armed: set while the balance is already at or below it, it fires once.

Evaluation follows the ledger, not samples of the balance: each evaluation replays the available
balance after every ledger entry of the wallet since the last evaluated one (`evaluated_seq`), so a
top-up and a new crossing between two evaluations still re-arm and fire, and a burst of charges
going down through T fires exactly once. At most the last HISTORY_LIMIT entries are replayed (a
longer backlog is judged on its most recent part).

Concurrency: an evaluation locks the tenant's alert_settings row first (the prompt path waits for
it; the beat scan skips rows another evaluation holds, SKIP LOCKED), reads the wallet and its new
ledger entries in one statement afterwards, flips the state rows with conditional UPDATEs and
enqueues the notifications in the same transaction. Two evaluations of one tenant therefore run
one after another and the second starts where the first stopped: nothing fires twice.
"""
from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field
from sqlalchemy import text

from billing_core import money
from billing_core.catalog import CURRENCY
from billing_core.db import UnitOfWork
from billing_core.fields import NonNegativeAmount, Strict, TenantId
from billing_core.notifications.outbox import EMAIL, WEBHOOK, NewNotification, insert_notifications
from billing_core.notifications.tables import alert_settings, alert_states

LOW, DEPLETED = "balance.low", "balance.depleted"
MAX_THRESHOLDS = 10
HISTORY_LIMIT = 10_000
SCAN_PAGE = 500


def event_type_for(threshold: Decimal) -> str:
    return DEPLETED if threshold == 0 else LOW


def generate_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


# --- the settings request -------------------------------------------------------------------------

_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")


def _webhook_url(value: str) -> str:
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a bad port
    except ValueError:
        raise ValueError("must be an http or https URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http or https URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials; authenticate deliveries by their signature")
    if parts.fragment:
        raise ValueError("must not have a fragment")
    if port == 0:
        raise ValueError("must not name port 0")
    return value


def _email(value: str) -> str:
    if not _EMAIL.match(value) or len(value.partition("@")[0]) > 64:
        raise ValueError("must be an e-mail address (name@domain)")
    return value


def _distinct(values: list[Decimal]) -> list[Decimal]:
    if len(set(values)) != len(values):
        raise ValueError("must be distinct amounts")
    return sorted(values, reverse=True)


class AlertSettingsRequest(Strict):
    """Thresholds on the available balance, and where alerts go. Omitting webhookSecret keeps the
    current secret (or generates one the first time); it is returned in the answer."""
    thresholds: Annotated[list[NonNegativeAmount], Field(min_length=1, max_length=MAX_THRESHOLDS),
                          AfterValidator(_distinct)]
    webhookUrl: Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_webhook_url)] | None = None
    webhookSecret: Annotated[str, Field(min_length=16, max_length=255, pattern=r"^[\x21-\x7e]+$")] | None = None
    email: Annotated[str, Field(min_length=3, max_length=254), AfterValidator(_email)] | None = None
    tenantId: TenantId | None = None


# --- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertState:
    threshold: Decimal
    armed: bool
    fired_count: int
    last_fired_at: datetime | None
    last_rearmed_at: datetime | None

    @property
    def event_type(self) -> str:
        return event_type_for(self.threshold)


@dataclass(frozen=True)
class AlertSettings:
    tenant_id: str
    webhook_url: str | None
    webhook_secret: str
    email: str | None
    created_at: datetime
    updated_at: datetime
    states: list[AlertState]

    @property
    def thresholds(self) -> list[Decimal]:
        return [s.threshold for s in self.states]


def get_settings(uow: UnitOfWork, tenant_id: str) -> AlertSettings | None:
    row = uow.connection.execute(
        alert_settings.select().where(alert_settings.c.tenant_id == tenant_id)).one_or_none()
    if row is None:
        return None
    states = uow.connection.execute(
        alert_states.select().where(alert_states.c.tenant_id == tenant_id).order_by(alert_states.c.threshold.desc())
    ).all()
    return AlertSettings(
        tenant_id=row.tenant_id, webhook_url=row.webhook_url, webhook_secret=row.webhook_secret, email=row.email,
        created_at=row.created_at, updated_at=row.updated_at,
        states=[AlertState(money.normalize(s.threshold), s.armed, s.fired_count, s.last_fired_at,
                           s.last_rearmed_at) for s in states],
    )


def put_settings(uow: UnitOfWork, tenant_id: str, command: AlertSettingsRequest) -> AlertSettings:
    """Replace the tenant's alert settings and commit. Thresholds kept keep their state (armed or
    fired); new ones start armed; removed ones are forgotten. The secret is kept unless a new one is
    given (generated the first time)."""
    # the upsert locks the settings row: no evaluation of this tenant runs meanwhile
    # INSERT … SELECT (no subquery in VALUES) and the transaction's time as a parameter (no now() in
    # DO UPDATE SET): both refused on a distributed table (Citus)
    uow.connection.execute(text("""
        INSERT INTO alert_settings (tenant_id, webhook_url, webhook_secret, email, evaluated_seq, updated_at)
        SELECT :t, :url, coalesce(:secret, :generated), :email, coalesce(max(seq), 0), :now
        FROM ledger_entries WHERE tenant_id = :t
        ON CONFLICT (tenant_id) DO UPDATE SET
            webhook_url = EXCLUDED.webhook_url, email = EXCLUDED.email,
            webhook_secret = coalesce(:secret, alert_settings.webhook_secret), updated_at = EXCLUDED.updated_at
    """), {"t": tenant_id, "url": command.webhookUrl, "secret": command.webhookSecret,
           "generated": generate_secret(), "email": command.email, "now": uow.now()})
    thresholds = [money.normalize(t) for t in command.thresholds]
    uow.connection.execute(text(
        "DELETE FROM alert_states WHERE tenant_id = :t AND threshold <> ALL(CAST(:thresholds AS numeric[]))"),
        {"t": tenant_id, "thresholds": thresholds})
    uow.connection.execute(text(
        "INSERT INTO alert_states (tenant_id, threshold) "
        "SELECT :t, unnest(CAST(:thresholds AS numeric[])) ON CONFLICT DO NOTHING"),
        {"t": tenant_id, "thresholds": thresholds})
    found = get_settings(uow, tenant_id)
    assert found is not None
    uow.commit()
    return found


# --- evaluation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    notification_ids: list[uuid.UUID] = field(default_factory=list)  # to dispatch after the commit
    fired: list[str] = field(default_factory=list)  # the event type of each alert that fired

    def __add__(self, other: Evaluation) -> Evaluation:
        return Evaluation(self.notification_ids + other.notification_ids, self.fired + other.fired)


def evaluate(uow: UnitOfWork, tenant_id: str) -> list[uuid.UUID]:
    """Evaluate the tenant's alerts now (waiting for an evaluation in progress), enqueue the
    notifications of the alerts that fire, commit. Returns the notification ids to dispatch."""
    return check(uow, tenant_id).notification_ids


def check(uow: UnitOfWork, tenant_id: str) -> Evaluation:
    """`evaluate`, also telling which alerts fired (for metrics)."""
    locked = uow.connection.execute(
        text("SELECT tenant_id FROM alert_settings WHERE tenant_id = :t FOR UPDATE"), {"t": tenant_id}
    ).scalar_one_or_none()
    if locked is None:
        uow.rollback()
        return Evaluation()
    found = _evaluate_locked(uow, tenant_id)
    uow.commit()
    return found


def scan_page(uow: UnitOfWork, after: str, limit: int = SCAN_PAGE) -> tuple[Evaluation, str | None]:
    """Evaluate the next `limit` tenants with alert settings after `after` (by tenant id) in one
    transaction, skipping those another evaluation holds; commit. Returns what fired and the last
    tenant id of the page (None when no tenant is left).

    Two steps, so that it runs on Citus: the candidates are read without a lock (an operator-wide scan),
    then each tenant's settings row is claimed by a statement filtered on that tenant (a cross-tenant
    FOR UPDATE cannot run distributed)."""
    tenants = list(uow.connection.execute(text("""
        SELECT tenant_id FROM alert_settings /* citus:operator-scan alert-candidates */
        WHERE tenant_id > :after ORDER BY tenant_id LIMIT :limit
    """), {"after": after, "limit": limit}).scalars())
    if not tenants:
        uow.rollback()
        return Evaluation(), None
    found = Evaluation()
    for tenant_id in tenants:
        claimed = uow.connection.execute(text(
            "SELECT tenant_id FROM alert_settings WHERE tenant_id = :t FOR UPDATE SKIP LOCKED"),
            {"t": tenant_id}).scalar_one_or_none()
        if claimed is not None:
            found += _evaluate_locked(uow, tenant_id)
    uow.commit()
    return found, tenants[-1]


def scan(new_uow: Callable[[], UnitOfWork], page_size: int = SCAN_PAGE) -> Evaluation:
    """The beat's safety net: evaluate every tenant with alert settings, page by page."""
    total = Evaluation()
    after: str | None = ""
    while after is not None:
        with new_uow() as uow:
            found, after = scan_page(uow, after, page_size)
        total += found
    return total


@dataclass(frozen=True)
class _Point:
    """The available balance after one ledger entry (entry None: the balance now, no new entries)."""
    available: Decimal
    entry_id: uuid.UUID | None = None
    entry_type: str | None = None
    usage_event_id: uuid.UUID | None = None
    at: datetime | None = None


def _evaluate_locked(uow: UnitOfWork, tenant: str) -> Evaluation:
    """Evaluate a tenant whose settings row this transaction holds locked."""
    # one statement, one snapshot: the wallet's balances and the entries that led to them agree
    rows = uow.connection.execute(text("""
        SELECT s.tenant_id, s.evaluated_seq, s.webhook_url, s.email,
               w.current_balance - w.reserved_balance AS available, w.currency,
               e.seq, e.id AS entry_id, e.entry_type, e.amount, e.reserved_change, e.usage_event_id,
               e.created_at AS entry_at
        FROM alert_settings s
        LEFT JOIN wallets w ON w.tenant_id = s.tenant_id
        LEFT JOIN LATERAL (
            SELECT le.seq, le.id, le.entry_type, le.amount, le.reserved_change, le.usage_event_id, le.created_at
            FROM ledger_entries le
            WHERE le.tenant_id = s.tenant_id AND le.wallet_id = w.id AND le.seq > s.evaluated_seq
            ORDER BY le.seq DESC
            LIMIT :history
        ) e ON true
        WHERE s.tenant_id = :t
        ORDER BY s.tenant_id, e.seq
    """), {"t": tenant, "history": HISTORY_LIMIT}).all()
    states = uow.connection.execute(text("""
        SELECT tenant_id, threshold, armed FROM alert_states WHERE tenant_id = :t
        ORDER BY tenant_id, threshold DESC FOR UPDATE
    """), {"t": tenant}).all()
    by_tenant: dict[str, list[Any]] = {}
    for row in rows:
        by_tenant.setdefault(row.tenant_id, []).append(row)
    states_by_tenant: dict[str, list[Any]] = {}
    for state in states:
        states_by_tenant.setdefault(state.tenant_id, []).append(state)

    new: list[NewNotification] = []
    fired_types: list[str] = []
    seqs: dict[str, int] = {}
    now = uow.now()
    for tenant_id, tenant_rows in by_tenant.items():
        first = tenant_rows[0]
        points = _points(tenant_rows)
        last_seq = max((r.seq for r in tenant_rows if r.seq is not None), default=None)
        if last_seq is not None and last_seq != first.evaluated_seq:
            seqs[tenant_id] = last_seq
        channels = [(channel, destination) for channel, destination in
                    ((WEBHOOK, first.webhook_url), (EMAIL, first.email)) if destination]
        for state in states_by_tenant.get(tenant_id, []):
            threshold = money.normalize(state.threshold)
            armed, fired, rearmed = state.armed, [], False
            for point in points:
                if armed and point.available <= threshold:
                    armed = False
                    fired.append(point)
                elif not armed and point.available > threshold:
                    armed, rearmed = True, True
            if not fired and not rearmed:
                continue
            _flip(uow, tenant_id, state.threshold, was_armed=state.armed, armed=armed, fired=len(fired),
                  rearmed=rearmed, now=now)
            for point in fired:
                fired_types.append(event_type_for(threshold))
                payload = _payload(threshold, point, first.currency or CURRENCY, now)
                new += [NewNotification(tenant_id, event_type_for(threshold), payload, channel, destination)
                        for channel, destination in channels]
    if tenant in seqs:
        uow.connection.execute(text("""
            UPDATE alert_settings SET evaluated_seq = :seq WHERE tenant_id = :t AND evaluated_seq < :seq
        """), {"t": tenant, "seq": seqs[tenant]})
    return Evaluation(insert_notifications(uow, new), fired_types)


def _points(tenant_rows: list[Any]) -> list[_Point]:
    """The available balance after each new ledger entry, oldest first, computed back from the
    balance now: before an entry it was (after − amount + reserved_change)."""
    now_available = tenant_rows[0].available if tenant_rows[0].available is not None else Decimal(0)
    entries = [r for r in tenant_rows if r.seq is not None]
    if not entries:
        return [_Point(now_available)]
    points = []
    after = now_available
    for entry in reversed(entries):
        points.append(_Point(after, entry.entry_id, entry.entry_type, entry.usage_event_id, entry.entry_at))
        after = money.add(money.subtract(after, entry.amount), entry.reserved_change)
    points.reverse()
    return points


def _flip(uow: UnitOfWork, tenant_id: str, threshold: Decimal, *, was_armed: bool, armed: bool, fired: int,
          rearmed: bool, now: datetime) -> None:
    """Conditional on the state read: a concurrent change (which the settings lock rules out) would
    fail the transaction rather than fire twice. The transaction's time is a parameter: no now() inside
    CASE on a distributed table (Citus)."""
    changed = uow.connection.execute(text("""
        UPDATE alert_states SET armed = :armed, fired_count = fired_count + :fired,
            last_fired_at = CASE WHEN :fired > 0 THEN CAST(:now AS timestamptz) ELSE last_fired_at END,
            last_rearmed_at = CASE WHEN :rearmed THEN CAST(:now AS timestamptz) ELSE last_rearmed_at END
        WHERE tenant_id = :t AND threshold = :threshold AND armed = :was_armed
        RETURNING threshold
    """), {"t": tenant_id, "threshold": threshold, "armed": armed, "fired": fired, "rearmed": rearmed,
           "was_armed": was_armed, "now": now}).first()
    if changed is None:
        raise RuntimeError(f"alert state of {tenant_id} at {threshold} changed under its evaluation")


def _payload(threshold: Decimal, point: _Point, currency: str, now: datetime) -> dict[str, Any]:
    return {"threshold": money.format_decimal(threshold), "availableBalance": money.format_decimal(point.available),
            "currency": currency, "crossedAt": point.at or now, "transactionId": point.entry_id,
            "transactionType": point.entry_type, "usageEventId": point.usage_event_id}
