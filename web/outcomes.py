"""Waiting for a charge's outcome without polling: workers announce settled usage events on a
Redis channel; one listener thread per web process wakes the request threads waiting on them."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import redis

from billing_core import logs
from billing_core.redis_clients import redis_from_url

log = logs.get(__name__)


class ChargeOutcomeListener:
    def __init__(self, redis_url: str, channel: str):
        self._redis_url, self._channel = redis_url, channel
        self._waiters: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._started_in_pid: int | None = None

    def wait(self, usage_event_id: str, timeout: int, is_settled: Callable[[], bool]) -> bool:
        """Block up to `timeout` seconds until `is_settled()` holds; it is checked once at the start
        and again only when the event is announced (or the listener reconnects)."""
        self._ensure_listening()
        wake = threading.Event()
        with self._lock:
            self._waiters.setdefault(usage_event_id, set()).add(wake)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if is_settled():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not wake.wait(remaining):
                    return is_settled()
                wake.clear()
        finally:
            with self._lock:
                waiting = self._waiters.get(usage_event_id)
                if waiting is not None:
                    waiting.discard(wake)
                    if not waiting:
                        del self._waiters[usage_event_id]

    def _ensure_listening(self) -> None:
        # per process: a gunicorn worker forked after the parent imported us needs its own thread
        with self._lock:
            if self._started_in_pid == os.getpid():
                return
            self._started_in_pid = os.getpid()
        threading.Thread(target=self._listen_forever, name="charge-outcomes", daemon=True).start()

    def _listen_forever(self) -> None:
        while True:
            try:
                client = redis_from_url(self._redis_url, socket_connect_timeout=2, health_check_interval=15)
                pubsub = client.pubsub()
                pubsub.subscribe(self._channel)
                for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        self._wake_all()  # announcements may have been missed while not subscribed
                    elif message["type"] == "message":  # space-separated usage event ids
                        self._wake(message["data"].decode("utf-8", "replace").split())
            except (redis.RedisError, OSError) as exc:
                log.warning("charge outcome listener lost Redis; retrying", error=str(exc))
                time.sleep(1)
            except Exception:  # the thread must outlive anything a message can do to it
                log.exception("charge outcome listener failed; restarting")
                time.sleep(1)

    def _wake(self, usage_event_ids: list[str]) -> None:
        with self._lock:
            for usage_event_id in usage_event_ids:
                for wake in self._waiters.get(usage_event_id, ()):
                    wake.set()

    def _wake_all(self) -> None:
        with self._lock:
            for waiting in self._waiters.values():
                for wake in waiting:
                    wake.set()
