"""A history checker for fault tests: every charge request sent and every answer received is recorded, then
checked against the database once the fault is over.

The checks (`History.check`):
- every acknowledged charge (200 or 202) is in the database exactly once, settled (charged or rejected),
  and a charged one has exactly one debit in the ledger: nothing acknowledged is lost or doubled;
- a charge that got no answer, or an error, is there at most once (the client may not know; the ledger
  may), and is not debited twice;
- no answer was a 5xx other than 503 (the service says "unavailable", never crashes);
- each tenant's ledger chain is unbroken (`GET /ledger/verify`: balance = sum of entries, each entry's
  balanceBefore = the previous balanceAfter) and its balance is what its debits and top-ups add up to.

`Load` drives it: N threads sending charges (synchronous and `Prefer: respond-async`, alternately) until
stopped. `History.outage()` measures the recovery: from the first failed request to the first success after
the last failure, per the client's clock.
"""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import requests
from sqlalchemy import Engine, func, select

from billing_core.ledger.tables import ledger_entries
from billing_core.usage.tables import usage_events
from tests.support.helpers import Api, stt_items
from tests.support.polling import eventually

ACKNOWLEDGED = (200, 202)
SETTLED = ("charged", "rejected")


@dataclass
class Attempt:
    """One charge request and what came back (status None: no answer at all)."""
    tenant_id: str
    idempotency_key: str
    mode: str  # "sync" or "async"
    sent_at: float
    answered_at: float = 0.0
    status: int | None = None
    code: str | None = None
    usage_event_id: str | None = None
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status in ACKNOWLEDGED


@dataclass
class History:
    attempts: list[Attempt] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def charge(self, api: Api, token: str, tenant_id: str, *, mode: str, quantity: str = "100",
               timeout: float = 40) -> Attempt:
        """POST /charge once (sync: waits for the outcome; async: `Prefer: respond-async`) and record it."""
        attempt = Attempt(tenant_id, f"h-{uuid.uuid4()}", mode, time.monotonic())
        body = {"featureKey": "fault-history", "idempotencyKey": attempt.idempotency_key,
                "items": stt_items(quantity)}
        headers = {"Prefer": "respond-async"} if mode == "async" else {}
        try:
            response = api.session.post(f"{api.base_url}/api/billing/charge?wait=20", json=body, timeout=timeout,
                                        headers={**headers, "Authorization": f"Bearer {token}"})
            attempt.status = response.status_code
            payload = _json(response)
            if attempt.acknowledged:
                attempt.usage_event_id = payload["usageEvent"]["id"]
            else:
                attempt.code = (payload.get("error") or {}).get("code")
        except requests.RequestException as exc:
            attempt.error = repr(exc)
        attempt.answered_at = time.monotonic()
        with self._lock:
            self.attempts.append(attempt)
        return attempt

    # --- what happened -------------------------------------------------------------------------------------

    def statuses(self) -> Counter:
        with self._lock:
            return Counter(a.status for a in self.attempts)

    def acknowledged(self) -> list[Attempt]:
        with self._lock:
            return [a for a in self.attempts if a.acknowledged]

    def successes_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for a in self.attempts if a.acknowledged and a.sent_at >= moment)

    def outage(self, since: float = 0.0) -> tuple[float, float] | None:
        """(first failure, first success after the last failure), client clock, for attempts sent after
        `since`; None when nothing failed. A request without an answer or any status but 200/202 counts."""
        with self._lock:
            attempts = sorted((a for a in self.attempts if a.sent_at >= since), key=lambda a: a.sent_at)
        failures = [a for a in attempts if not a.acknowledged]
        if not failures:
            return None
        last_failure = max(a.answered_at for a in failures)
        after = [a.answered_at for a in attempts if a.acknowledged and a.answered_at > last_failure]
        return failures[0].sent_at, (min(after) if after else float("inf"))

    def recovery_seconds(self, since: float = 0.0) -> float:
        window = self.outage(since)
        return 0.0 if window is None else window[1] - window[0]

    # --- the checks ------------------------------------------------------------------------------------------

    def check(self, engine: Engine, api: Api, admin_token_for: Any, *, settle_timeout: float = 90) -> dict[str, int]:
        """Every check in the module's docstring; returns counts for the test's report."""
        with self._lock:
            attempts = list(self.attempts)
        unexpected = [a for a in attempts if a.status is not None and a.status >= 500 and a.status != 503]
        assert not unexpected, f"5xx other than 503: {[(a.status, a.code) for a in unexpected[:5]]}"
        keys_by_tenant: dict[str, set[str]] = {}
        for attempt in attempts:
            keys_by_tenant.setdefault(attempt.tenant_id, set()).add(attempt.idempotency_key)

        def events() -> dict[tuple[str, str], list[dict]]:
            found: dict[tuple[str, str], list[dict]] = {}
            with engine.connect() as connection:
                for tenant_id, keys in keys_by_tenant.items():
                    rows = connection.execute(
                        select(usage_events.c.id, usage_events.c.idempotency_key, usage_events.c.status,
                               usage_events.c.total_cost)
                        .where(usage_events.c.tenant_id == tenant_id,
                               usage_events.c.idempotency_key.in_(list(keys)))).mappings().all()
                    for row in rows:
                        found.setdefault((tenant_id, row["idempotency_key"]), []).append(dict(row))
            return found

        # the pending ones (accepted but not charged when the fault struck) are the sweep's to finish
        def all_settled() -> bool:
            return all(row["status"] in SETTLED for rows in events().values() for row in rows)

        eventually(all_settled, settle_timeout, 0.5, what="every recorded charge settled")
        found = events()
        for attempt in attempts:
            rows = found.get((attempt.tenant_id, attempt.idempotency_key), [])
            assert len(rows) <= 1, f"charge {attempt.idempotency_key} recorded {len(rows)} times"
            if attempt.acknowledged:
                assert rows, f"acknowledged charge {attempt.idempotency_key} ({attempt.status}) is missing"
                assert str(rows[0]["id"]) == attempt.usage_event_id, "acknowledged as another usage event"

        event_ids = [rows[0]["id"] for rows in found.values()]
        with engine.connect() as connection:
            debits = dict(connection.execute(
                select(ledger_entries.c.usage_event_id, func.count())
                .where(ledger_entries.c.tenant_id.in_(list(keys_by_tenant)),
                       ledger_entries.c.usage_event_id.in_(event_ids), ledger_entries.c.entry_type == "debit")
                .group_by(ledger_entries.c.usage_event_id)).all())
        charged = 0
        for rows in found.values():
            row = rows[0]
            expected = 1 if row["status"] == "charged" else 0
            assert debits.get(row["id"], 0) == expected, \
                f"usage event {row['id']} ({row['status']}) has {debits.get(row['id'], 0)} debits"
            charged += expected

        for tenant_id in keys_by_tenant:
            admin = admin_token_for(tenant_id)
            verdict = api.get(f"/api/billing/ledger/verify?tenantId={tenant_id}", admin).json()
            assert verdict["ok"], verdict
            with engine.connect() as connection:
                entries = connection.execute(
                    select(ledger_entries.c.amount, ledger_entries.c.balance_before, ledger_entries.c.balance_after)
                    .where(ledger_entries.c.tenant_id == tenant_id).order_by(ledger_entries.c.seq)).all()
            balance = Decimal(0)
            for amount, before, after in entries:
                assert before == balance and after == before + amount, f"{tenant_id}: ledger chain broken"
                balance = after
        return {"sent": len(attempts), "acknowledged": sum(a.acknowledged for a in attempts),
                "charged": charged, "unanswered": sum(a.status is None for a in attempts)}


class Load:
    """`senders` threads charging until `stop()`: sync and async requests alternate, each recorded."""

    def __init__(self, history: History, base_url: str, token: str, tenant_id: str, senders: int = 8,
                 pause: float = 0.02):
        self.history, self.base_url, self.token, self.tenant_id = history, base_url, token, tenant_id
        self.pause = pause
        self._stop = threading.Event()
        modes = itertools.cycle(["sync", "async"])
        self._threads = [threading.Thread(target=self._send, args=(next(modes),), daemon=True)
                         for _ in range(senders)]

    def _send(self, first_mode: str) -> None:
        api = Api(self.base_url)
        modes = itertools.cycle([first_mode, "async" if first_mode == "sync" else "sync"])
        while not self._stop.is_set():
            attempt = self.history.charge(api, self.token, self.tenant_id, mode=next(modes))
            if not attempt.acknowledged:
                api = Api(self.base_url)  # a fresh connection after an error
                time.sleep(0.2)
            else:
                time.sleep(self.pause)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def __exit__(self, *_: object) -> None:
        self.stop()


def _json(response: requests.Response) -> dict:
    try:
        payload = response.json()
        return payload if isinstance(payload, dict) else {}
    except ValueError:
        return {}
