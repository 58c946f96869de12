"""The one poller of the tests: they may poll what the service does in the background (the service
itself never polls)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(condition: Callable[[], T], timeout: float = 60, interval: float = 0.2, *, what: str = "condition",
               until: Callable[[T], Any] = bool) -> T:
    """Call `condition` until `until` holds of what it returns (by default: until it returns something
    truthy) and return that; fail after `timeout` seconds, naming `what` and the last value. An exception
    from `condition` fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached after {timeout}s; last: {value!r}")
        time.sleep(interval)
