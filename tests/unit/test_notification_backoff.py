"""Notification retries: the backoff doubles with jitter up to its cap."""
from __future__ import annotations

from billing_core.notifications import outbox


def test_backoff_doubles_with_jitter_up_to_the_cap():
    settings = outbox.NotificationSettings(retry_base_ms=1000, retry_max_delay_ms=60_000)
    for attempt, ceiling in [(1, 1000), (2, 2000), (3, 4000), (7, 60_000), (60, 60_000)]:
        delays = {outbox.backoff_ms(attempt, settings) for _ in range(200)}
        assert all(ceiling // 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
