"""Periodic jobs run by the tests themselves: the end-to-end stack has no beat, so a test that needs a
job runs it, in this process, exactly as beat would (tasks.jobs.run_job: the same task, the same
arguments). Imported inside tests: the Celery app reads the stack's queue from the environment."""
from __future__ import annotations

import os
from typing import Any

from tests.support.clock import TestClock


def run_job(name: str) -> Any:
    """Run the beat entry `name` now, in this process."""
    from tasks.jobs import run_job as run

    return run(name)


def sweep_pending_charges(clock: TestClock) -> int:
    """What beat's pending sweep does for charges whose message never went out: once their age has
    passed (the clock moves past PENDING_CHARGE_AGE_SECONDS instead of the test waiting for it), the
    sweep hands them to a worker. The number of charges it enqueued."""
    clock.advance(int(os.environ["PENDING_CHARGE_AGE_SECONDS"]) + 1)
    return run_job("sweep-pending-charges")
