"""When to try a request again, and how long to wait first: shared by the sync and async clients."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ._operations import Operation
from .errors import BillingError, ConcurrencyLimit, NetworkError, error_for

# no answer, or an answer that says "later": 408, 429 and 5xx; every other 4xx is final
RETRYABLE_STATUS = frozenset({408, 429})


def retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `max_retries` more attempts, all within `deadline` seconds of the first; exponential backoff
    with full jitter (a random wait in [0, min(cap, base × 2^attempt)]), or the server's Retry-After."""
    max_retries: int = 3
    deadline: float = 60.0
    backoff_base: float = 0.5
    backoff_cap: float = 8.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** attempt))


class Attempts:
    """The retry loop's bookkeeping for one operation: decides after each failed attempt whether and
    how long to wait, or raises the last error."""

    def __init__(self, policy: RetryPolicy, op: Operation, timeout: float):
        self.policy, self.op, self.timeout = policy, op, timeout
        self.started = time.monotonic()
        self.attempt = 0

    def attempt_timeout(self) -> float:
        wanted = max(self.timeout, self.op.timeout or 0)
        return max(0.1, min(wanted, self.started + self.policy.deadline - time.monotonic()))

    def outcome(self, response: httpx.Response) -> tuple[bool, Any]:
        """(done, value): the decoded answer, or the error to retry on; a final error is raised."""
        body = _json(response)
        if response.status_code < 400:
            return True, self.op.decode(response.status_code, body, response.headers)
        error = error_for(response.status_code, body, request_id=response.headers.get("x-request-id"),
                          idempotency_key=self.op.idempotency_key,
                          retry_after=retry_after_seconds(response.headers.get("retry-after")))
        if not retryable_status(response.status_code) or isinstance(error, ConcurrencyLimit):
            raise error  # a call refused for want of a slot is the caller's to decide, not to retry
        return False, error

    def network_error(self, exc: httpx.TransportError) -> BillingError:
        error = NetworkError(f"{type(exc).__name__}: {exc}", idempotency_key=self.op.idempotency_key)
        error.__cause__ = exc
        return error

    def wait_before_next(self, error: BillingError) -> float:
        """Seconds to wait before the next attempt; raises `error` when no attempt is left."""
        delay = self.policy.delay(self.attempt, error.retry_after)
        self.attempt += 1
        if self.attempt > self.policy.max_retries or time.monotonic() + delay >= self.started + self.policy.deadline:
            raise error
        return delay


def _json(response: httpx.Response) -> Any:
    import json
    from decimal import Decimal

    try:
        return json.loads(response.content, parse_float=Decimal) if response.content else None
    except ValueError:
        return None
