"""Documents issued from other processes, for the numbering tests: each call runs in a process of its
own (spawned), as two workers would."""
from __future__ import annotations

import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text


def top_ups_in_threads(database_url: str, tenants: list[str], amount: str) -> list[str]:
    """One paid top-up per tenant, concurrently (threads of this process); the receipt numbers."""
    from billing_core.db import UnitOfWork, engine_for
    from billing_core.ledger import credits
    from billing_core.ledger.commands import TopUpRequest

    engine = engine_for(database_url)

    def one(tenant: str) -> str:
        with UnitOfWork(engine) as uow:
            result = credits.top_up(uow, tenant, TopUpRequest(amount=amount, idempotencyKey=str(uuid.uuid4())),
                                    created_by="test")
        assert result.grant is not None
        with UnitOfWork(engine) as uow:
            return str(uow.connection.execute(text("SELECT number FROM receipts WHERE tenant_id = :t AND grant_id = :g"),
                                              {"t": tenant, "g": result.grant.id}).scalar_one())

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, tenants))


def issue_in_threads(database_url: str, top_up_tenants: list[str], rollup_tenants: list[str],
                     period: str) -> list[str]:
    """Paid top-ups (receipts) and one-tenant rollups of `period` (invoices), all at once on threads of
    this process; the numbers of what they issued."""
    from billing_core.db import UnitOfWork, engine_for
    from billing_core.invoicing import invoices

    engine = engine_for(database_url)

    def finalize(tenant: str) -> str:
        with UnitOfWork(engine) as uow:
            [(invoice_id, _)] = invoices.rollup(uow, invoices.Period.parse(period), tenant_id=tenant).created
        with UnitOfWork(engine) as uow:
            return invoices.get_invoice(uow, tenant, invoice_id).number or ""

    with ThreadPoolExecutor(8) as pool:
        finalized = pool.map(finalize, rollup_tenants)
        return top_ups_in_threads(database_url, top_up_tenants, "1.5") + list(finalized)


def issue_and_hang(database_url: str, tenant: str, key: str) -> None:
    """A worker that issues a receipt and then hangs before its commit, to be killed there
    (python -m tests.support.documents URL TENANT KEY): prints "issued" once the number is taken."""
    from billing_core.db import UnitOfWork, engine_for
    from billing_core.ledger import credits
    from billing_core.ledger.commands import TopUpRequest

    with UnitOfWork(engine_for(database_url)) as uow:
        uow.commit = lambda: (print("issued", flush=True), time.sleep(600))  # type: ignore[method-assign]
        credits.top_up(uow, tenant, TopUpRequest(amount="5", idempotencyKey=key), created_by="test")


if __name__ == "__main__":
    issue_and_hang(*sys.argv[1:4])
