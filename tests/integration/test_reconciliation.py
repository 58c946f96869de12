"""Hourly reconciliation against the real database."""
from __future__ import annotations

import threading

from sqlalchemy import text


def test_reconciliation_records_one_run_per_hour_however_often_it_runs(engine):
    from billing_core.db import UnitOfWork
    from billing_core.ledger import reconciliation

    with engine.begin() as connection:
        connection.execute(text("DELETE FROM reconciliation_runs"))
    results = []

    def run() -> None:
        with UnitOfWork(engine) as uow:
            results.append(reconciliation.reconcile(uow))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.recorded for r in results) == [False, False, True]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM reconciliation_runs")).scalar_one() == 1
