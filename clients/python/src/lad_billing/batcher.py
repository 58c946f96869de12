"""`UsageBatcher`: collect charges in memory and send them through POST /charges in batches."""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, wait
from typing import Any

from . import models as m
from ._operations import ChargeEvent, new_idempotency_key
from .client import BillingClient, Items

MAX_BATCH = 1000  # what POST /charges takes at once


class ChargeFuture(Future):
    """An event's outcome (a `BatchResult`, or the error that sank its batch after every retry), with
    the event's idempotency key: sending the same event again under it can never charge it twice."""

    def __init__(self, idempotency_key: str):
        super().__init__()
        self.idempotency_key = idempotency_key


class UsageBatcher:
    """Charges collected from any number of threads, sent every `max_events` events or `max_interval`
    seconds, whichever comes first, and on `flush()` / `close()` / leaving the `with` block. At most
    `max_pending` events wait in memory: `add` blocks while the batcher is full. Each event keeps its
    own idempotency key across every retry of its batch."""

    def __init__(self, client: BillingClient, *, max_events: int = 100, max_interval: float = 1.0,
                 max_pending: int = 10_000):
        if not 1 <= max_events <= MAX_BATCH:
            raise ValueError(f"max_events must be 1..{MAX_BATCH}")
        self.client = client
        self.max_events, self.max_interval, self.max_pending = max_events, max_interval, max(max_pending, max_events)
        self._waiting: deque[tuple[ChargeEvent, ChargeFuture, float]] = deque()
        self._lock = threading.Condition()
        self._in_flight: list[ChargeFuture] = []
        self._flush_now = False
        self._closed = False
        self._sender = threading.Thread(target=self._run, name="lad-billing-batcher", daemon=True)
        self._sender.start()

    def add(self, feature_key: str, items: Items, *, idempotency_key: str | None = None,
            external_reference_id: str | None = None, reservation_id: str | None = None, quote_id: str | None = None,
            metadata: Mapping[str, Any] | None = None, timeout: float | None = None) -> ChargeFuture:
        key = idempotency_key or new_idempotency_key("charge")
        event = ChargeEvent(feature_key, list(items), key, external_reference_id, reservation_id, quote_id, metadata)
        event.body(key)  # a float amount raises here, to its producer, rather than sinking a whole batch
        future = ChargeFuture(key)
        with self._lock:
            if not self._lock.wait_for(lambda: self._closed or len(self._waiting) < self.max_pending, timeout):
                raise TimeoutError("the batcher is full")
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append((event, future, time.monotonic()))
            self._lock.notify_all()
        return future

    def flush(self) -> None:
        """Send everything added so far and wait for its outcomes."""
        with self._lock:
            pending = [future for _, future, _ in self._waiting] + self._in_flight
            self._flush_now = True
            self._lock.notify_all()
        wait(pending)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._sender.join()

    def __enter__(self) -> UsageBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _due(self) -> bool:
        if not self._waiting:
            return False
        if self._closed or self._flush_now or len(self._waiting) >= self.max_events:
            return True
        return time.monotonic() - self._waiting[0][2] >= self.max_interval

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._due():
                    if self._closed and not self._waiting:
                        return
                    timeout = None if not self._waiting else max(
                        0.0, self.max_interval - (time.monotonic() - self._waiting[0][2]))
                    self._lock.wait(timeout)
                batch = [self._waiting.popleft() for _ in range(min(self.max_events, len(self._waiting)))]
                self._in_flight = [future for _, future, _ in batch]
                if not self._waiting:
                    self._flush_now = False
                self._lock.notify_all()  # room for blocked producers
            self._send(batch)

    def _send(self, batch: list[tuple[ChargeEvent, ChargeFuture, float]]) -> None:
        try:
            results: list[m.BatchResult] = self.client.charges(event for event, _, _ in batch)
        except BaseException as exc:  # noqa: BLE001 - every waiting producer must hear of it
            for _, future, _ in batch:
                future.set_exception(exc)
            return
        for (_, future, _), result in zip(batch, results, strict=True):
            future.set_result(result)
