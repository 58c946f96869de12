"""Documents on real PostgreSQL: receipts of paid grants with their tax, and one gapless number
series per issuer under concurrent issuing from two processes and a worker killed mid-issue."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from billing_core.db import UnitOfWork
from billing_core.documents import parties, receipts
from billing_core.documents.commands import BillingDetailsRequest, IssuerRequest, TaxTreatmentRequest
from billing_core.invoicing import invoices
from billing_core.ledger import credits
from billing_core.ledger.commands import TopUpRequest
from tests.support.documents import issue_in_threads
from tests.support.invoices import History, months


def _tenant() -> str:
    return f"doc-{uuid.uuid4().hex[:12]}"


def _series(engine) -> list[tuple[int, str, str, uuid.UUID]]:
    with engine.connect() as connection:
        return list(connection.execute(text(
            "SELECT number_value, number, document_type, document_id FROM document_numbers "
            "WHERE issuer_id = 'platform' ORDER BY number_value")))


def assert_gapless(engine) -> list[tuple[int, str, str, uuid.UUID]]:
    """The platform's series is 1..N without a hole, the counter is at N + 1, and every number belongs
    to an issued document that carries it."""
    numbers = _series(engine)
    assert [n for n, *_ in numbers] == list(range(1, len(numbers) + 1))
    with engine.connect() as connection:
        assert connection.execute(text(
            "SELECT next_number FROM document_series WHERE issuer_id = 'platform'")).scalar_one() == len(numbers) + 1
        stored = dict(connection.execute(text(
            "SELECT id, number FROM receipts UNION ALL SELECT id, number FROM credit_notes "
            "UNION ALL SELECT id, number FROM invoices WHERE number IS NOT NULL")).all())
    assert {document_id: number for _, number, _, document_id in numbers} == stored
    return numbers


def _top_up(engine, tenant: str, amount: str, kind: str = "paid", key: str | None = None) -> credits.CreditResult:
    with UnitOfWork(engine) as uow:
        return credits.top_up(uow, tenant, TopUpRequest(amount=amount, kind=kind, idempotencyKey=key or str(uuid.uuid4())),
                              created_by="test")


def _receipt(engine, tenant: str, result: credits.CreditResult) -> receipts.Receipt | None:
    assert result.grant is not None
    with UnitOfWork(engine) as uow:
        return receipts.receipt_for_grant(uow, tenant, result.grant.id)


@pytest.mark.parametrize("rate", ["0.19", "0.077", "0.21"])
@pytest.mark.parametrize("gross", ["0.05", "33.33", "0.01", "100", "12345.67"])
def test_net_plus_tax_is_gross_with_awkward_rates(rate, gross):
    treatment = parties.TaxTreatment("rate", Decimal(rate), "VAT")
    net, tax, difference = receipts.tax_split(Decimal(gross), treatment, 2)
    assert net + tax == Decimal(gross)
    assert net == net.quantize(Decimal("0.01")) and tax == tax.quantize(Decimal("0.01"))
    # net is the gross over (1 + rate), to the nearest cent
    assert abs(net - Decimal(gross) / (1 + Decimal(rate))) <= Decimal("0.005")
    assert difference == tax - net * Decimal(rate)  # stated exactly


def test_a_paid_top_up_issues_a_receipt_with_its_tax_and_promotions_none(engine):
    tenant = _tenant()
    with UnitOfWork(engine) as uow:
        parties.set_issuer(uow, IssuerRequest(legalName="LAD Voice GmbH", address="Torstrasse 1\n10119 Berlin",
                                              taxId="DE123456789", email="billing@lad.example", numberPrefix="LAD-"))
    with UnitOfWork(engine) as uow:
        parties.set_billing_details(uow, tenant, BillingDetailsRequest(legalName="Acme SARL", address="1 rue X, Paris",
                                                                       taxId="FR99999999999"))
    with UnitOfWork(engine) as uow:
        parties.set_tax_treatment(uow, tenant, TaxTreatmentRequest(mode="rate", rate="0.19", label="VAT 19%"))
        uow.commit()
    receipt = _receipt(engine, tenant, _top_up(engine, tenant, "33.33"))
    assert receipt is not None
    assert (receipt.net, receipt.tax, receipt.gross) == (Decimal("28.01"), Decimal("5.32"), Decimal("33.33"))
    assert receipt.tax_label == "VAT 19%" and receipt.tax_wording is None
    assert receipt.rounding_difference == Decimal("5.32") - Decimal("28.01") * Decimal("0.19")
    assert receipt.number.startswith("LAD-") and receipt.issuer["legalName"] == "LAD Voice GmbH"
    assert receipt.customer == {"legalName": "Acme SARL", "address": "1 rue X, Paris", "taxId": "FR99999999999"}

    assert _receipt(engine, tenant, _top_up(engine, tenant, "10", kind="promotional")) is None

    # a replayed top-up creates no second grant and no second receipt
    key = str(uuid.uuid4())
    first, again = _top_up(engine, tenant, "7", key=key), _top_up(engine, tenant, "7", key=key)
    assert again.replayed and first.grant.id == again.grant.id
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM receipts WHERE tenant_id = :t"),
                                  {"t": tenant}).scalar_one() == 2

    with UnitOfWork(engine) as uow:
        parties.set_tax_treatment(uow, tenant, TaxTreatmentRequest(mode="reverse_charge"))
        uow.commit()
    reverse = _receipt(engine, tenant, _top_up(engine, tenant, "0.05"))
    assert reverse is not None and (reverse.net, reverse.tax, reverse.gross) == (Decimal("0.05"), 0, Decimal("0.05"))
    assert "Reverse charge" in (reverse.tax_wording or "") and reverse.tax_label is None
    assert_gapless(engine)


def test_fifty_concurrent_finalizations_and_receipts_from_two_processes_form_one_gapless_series(engine, database_url):
    previous, _ = months()
    invoiced = [_tenant() for _ in range(10)]
    for tenant in invoiced:  # money moving in the closed month: each has an invoice to finalize
        History(engine, tenant).top_up(previous.start + timedelta(days=3), "4", kind="promotional")
    buying = [_tenant() for _ in range(40)]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        halves = list(pool.map(issue_in_threads, [database_url] * 2, [buying[:20], buying[20:]],
                               [invoiced[:5], invoiced[5:]], [previous.label] * 2))
    issued = [number for half in halves for number in half]
    assert len(issued) == 50 and len(set(issued)) == 50
    numbers = assert_gapless(engine)
    assert sorted(int(number.rsplit("-", 1)[-1]) for number in issued) == \
        list(range(numbers[-1][0] - 49, numbers[-1][0] + 1))  # consecutive, nothing in between
    kinds = {number: kind for _, number, kind, _ in numbers}
    assert sorted(kinds[number] for number in issued) == ["invoice"] * 10 + ["receipt"] * 40


def test_a_worker_killed_mid_issue_leaves_no_gap_and_its_retry_issues_once(engine, database_url):
    tenant, key = _tenant(), str(uuid.uuid4())
    before = len(_series(engine))
    worker = subprocess.Popen([sys.executable, "-m", "tests.support.documents", database_url, tenant, key],
                              stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "issued"  # number taken, not committed
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
    # others issue meanwhile: the killed worker's number went back with its transaction
    other = _tenant()
    assert _receipt(engine, other, _top_up(engine, other, "2")) is not None
    retried = _top_up(engine, tenant, "5", key=key)  # the task's retry: the same top-up, issued once
    assert not retried.replayed and _receipt(engine, tenant, retried) is not None
    assert _top_up(engine, tenant, "5", key=key).replayed
    numbers = assert_gapless(engine)
    assert len(numbers) == before + 2
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM receipts WHERE tenant_id = :t"),
                                  {"t": tenant}).scalar_one() == 1


def test_a_rollup_that_dies_before_its_commit_gives_its_numbers_back(engine):
    previous, _ = months()
    tenants = [_tenant() for _ in range(3)]
    for tenant in tenants:
        History(engine, tenant).top_up(previous.start + timedelta(days=2), "3", kind="promotional")
    before = len(_series(engine))

    class Died(Exception):
        pass

    def dies() -> None:
        raise Died

    with UnitOfWork(engine) as uow, pytest.raises(Died):
        uow.commit = dies  # the worker is lost after numbering and writing, before the commit
        invoices.rollup(uow, previous, tenant_id=tenants[0])
    assert len(assert_gapless(engine)) == before
    # the retried task, and the other tenants' rollups, number on from where the series stood
    for tenant in tenants:
        with UnitOfWork(engine) as uow:
            assert len(invoices.rollup(uow, previous, tenant_id=tenant).created) == 1
    with UnitOfWork(engine) as uow:  # run again: nothing more is issued
        assert invoices.rollup(uow, previous, tenant_id=tenants[0]).created == []
    numbers = assert_gapless(engine)
    assert [kind for _, _, kind, _ in numbers[before:]] == ["invoice"] * 3
