"""Re-rate runs: one task per run, resumable (acks late: a run whose worker died is redelivered, and
each tenant it already posted is skipped)."""
from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.exc import OperationalError

from billing_core import logs
from billing_core.bootstrap import unit_of_work
from billing_core.corrections import rerates
from tasks.app import celery_app

log = logs.get(__name__)


@celery_app.task(name="billing.rerate", bind=True, autoretry_for=(OperationalError,), retry_backoff=True,
                 max_retries=20, soft_time_limit=3600, time_limit=3700)
def rerate(self: Any, run_id: str) -> dict[str, Any]:
    status = rerates.run(unit_of_work, uuid.UUID(run_id))
    log.info("re-rate", rerate_id=run_id, status=status)
    return {"rerateId": run_id, "status": status}
