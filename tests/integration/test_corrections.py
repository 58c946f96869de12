"""Void and amend one usage event (issue 20): new entries tied to the event, never edits; balances,
ledger verification, budget spend, tier positions and the next invoice agree after every step."""
from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from tests.support.corrections import (
    TIERS,
    D,
    budget_spent,
    charge,
    fund,
    invoice_lines,
    new_tenant,
    set_global_price,
    tier_position,
    to_next_month,
)
from tests.support.pricing import at_once, new_item


def _key() -> tuple[str, str, str, str]:
    item = new_item()
    return (item["category"], item["provider"], item["model"], item["unit"])


def _correct(engine, tenant, event_id, action, items=None, key=None, reason="wrong record"):  # noqa: ANN001, ANN202
    from billing_core.corrections.commands import CorrectionRequest
    from billing_core.corrections.events import correct_usage_event
    from billing_core.db import UnitOfWork

    with UnitOfWork(engine) as uow:
        return correct_usage_event(uow, tenant, event_id, CorrectionRequest(
            action=action, items=items, reason=reason, idempotencyKey=key or f"c-{uuid.uuid4()}"), created_by="test")


def _balance(engine, tenant) -> D:  # noqa: ANN001
    from billing_core.db import UnitOfWork
    from billing_core.ledger.wallets import get_wallet

    with UnitOfWork(engine) as uow:
        return get_wallet(uow, tenant).current_balance


def _verified(engine, tenant) -> None:  # noqa: ANN001
    from billing_core.db import UnitOfWork
    from billing_core.ledger.verification import verify

    with UnitOfWork(engine) as uow:
        result = verify(uow, tenant)
    assert result.ok, result


def test_void_and_amend_move_balance_budget_positions_and_the_invoice_together(engine, clock):
    from billing_core.catalog.positions import month_of
    from billing_core.db import UnitOfWork
    from billing_core.invoicing import invoices
    from billing_core.invoicing.invoices import Period
    from billing_core.lifecycle.budgets import set_budget

    tenant, key = new_tenant(), _key()
    item = dict(zip(("category", "provider", "model", "unit"), key, strict=True))
    set_global_price(engine, key, tiers=TIERS)
    fund(engine, tenant, "1000")
    with UnitOfWork(engine) as uow:
        set_budget(uow, tenant, "calls", spend_limit=D("100000"), period="month", action="alert")
    month = month_of(clock.now())
    first = charge(engine, tenant, key, "800")
    second = charge(engine, tenant, key, "400")
    assert first.event.total_cost + second.event.total_cost == at_once(D(1200))

    # amend the second down to 100 units: priced where the month stands without its own 400
    key_amend = f"amend-{uuid.uuid4()}"
    amended = _correct(engine, tenant, second.event.id, "amend", [{**item, "quantity": "100"}], key=key_amend)
    assert amended.cost_after == at_once(D(900)) - at_once(D(800))
    assert amended.difference == second.event.total_cost - amended.cost_after
    again = _correct(engine, tenant, second.event.id, "amend", [{**item, "quantity": "100"}], key=key_amend)
    assert again.replayed and again.id == amended.id  # the same correction twice posts once
    assert _balance(engine, tenant) == D(1000) - at_once(D(900))
    assert tier_position(engine, tenant, key, month) == D(900)
    assert budget_spent(engine, tenant, "calls", month) == at_once(D(900))
    _verified(engine, tenant)

    # amend up again (debit), then void: everything the event still costs comes back, once
    up = _correct(engine, tenant, second.event.id, "amend", [{**item, "quantity": "300"}])
    assert up.difference == -(at_once(D(1100)) - at_once(D(900)))
    assert _balance(engine, tenant) == D(1000) - at_once(D(1100))
    void = _correct(engine, tenant, second.event.id, "void")
    assert void.difference == at_once(D(1100)) - at_once(D(800))
    assert _balance(engine, tenant) == D(1000) - at_once(D(800))
    assert tier_position(engine, tenant, key, month) == D(800)
    assert budget_spent(engine, tenant, "calls", month) == at_once(D(800))
    assert _correct(engine, tenant, second.event.id, "void").difference == 0  # a void of a void: nothing left
    _verified(engine, tenant)

    # the invoice of the month reconciles with the corrections on it
    to_next_month(clock)
    with UnitOfWork(engine) as uow:
        assert len(invoices.rollup(uow, Period.containing(month), tenant_id=tenant).created) == 1
    lines = invoice_lines(engine, tenant, Period.containing(month).first_day)
    corrections = sum((line.exact_amount for line in lines if line.line_type == "correction"), D(0))
    assert corrections == amended.difference + up.difference + void.difference


def test_a_void_of_a_partly_refunded_event_returns_only_what_is_left(engine):
    from billing_core.db import UnitOfWork
    from billing_core.errors import RefundExceeded
    from billing_core.ledger import credits
    from billing_core.ledger.commands import RefundRequest
    from billing_core.ledger.wallets import debit_for_event

    tenant, key = new_tenant(), _key()
    set_global_price(engine, key, unit_price="1")
    fund(engine, tenant, "100")
    event = charge(engine, tenant, key, "10").event
    with UnitOfWork(engine) as uow:
        debit = debit_for_event(uow, tenant, event.id)
    with UnitOfWork(engine) as uow:
        credits.refund(uow, tenant, RefundRequest(transactionId=debit.id, amount="4", reason="goodwill",
                                                  idempotencyKey=f"r-{uuid.uuid4()}"), created_by="test")
    void = _correct(engine, tenant, event.id, "void")
    assert void.difference == D(6)
    assert _balance(engine, tenant) == D(100)
    from billing_core.invoicing.margins import margins

    with engine.connect() as connection:  # margins: original 10, refunded 4, corrected 6, net 0
        found = margins(connection, start=event.occurred_at, end=event.occurred_at + timedelta(seconds=1),
                        group_by="tenant", tenant_id=tenant)
    assert (found.corrections, found.revenue + found.uncosted_revenue) == (D(6), D(0))
    with UnitOfWork(engine) as uow, pytest.raises(RefundExceeded):  # nothing is left to refund
        credits.refund(uow, tenant, RefundRequest(transactionId=debit.id, reason="more",
                                                  idempotencyKey=f"r-{uuid.uuid4()}"), created_by="test")
    _verified(engine, tenant)


def test_an_amend_to_less_after_a_refund_never_returns_more_than_was_charged(engine):
    from billing_core.db import UnitOfWork
    from billing_core.ledger import credits
    from billing_core.ledger.commands import RefundRequest
    from billing_core.ledger.wallets import debit_for_event

    tenant, key = new_tenant(), _key()
    item = dict(zip(("category", "provider", "model", "unit"), key, strict=True))
    set_global_price(engine, key, unit_price="1")
    fund(engine, tenant, "100")
    event = charge(engine, tenant, key, "10").event
    with UnitOfWork(engine) as uow:
        debit = debit_for_event(uow, tenant, event.id)
    with UnitOfWork(engine) as uow:
        credits.refund(uow, tenant, RefundRequest(transactionId=debit.id, amount="8", reason="goodwill",
                                                  idempotencyKey=f"r-{uuid.uuid4()}"), created_by="test")
    amended = _correct(engine, tenant, event.id, "amend", [{**item, "quantity": "5"}])
    assert amended.difference == D(2)  # 5 less was priced, but only 2 of the 10 was still paid
    assert _balance(engine, tenant) == D(100)
    _verified(engine, tenant)


def test_a_correction_of_a_finalized_month_issues_a_numbered_note_and_a_prior_period_line(engine, clock, tmp_path):
    from billing_core.db import UnitOfWork
    from billing_core.documents import credit_notes
    from billing_core.invoicing import invoices
    from billing_core.invoicing.invoices import Period
    from billing_core.invoicing.rendering import credit_note_csv, credit_note_pdf
    from billing_core.ledger import reconciliation

    tenant, key = new_tenant(), _key()
    item = dict(zip(("category", "provider", "model", "unit"), key, strict=True))
    set_global_price(engine, key, unit_price="0.25")
    fund(engine, tenant, "100")
    closed = Period.containing(clock.now())
    event = charge(engine, tenant, key, "40").event  # 10
    to_next_month(clock)
    with UnitOfWork(engine) as uow:
        invoice_id, _ = invoices.rollup(uow, closed, tenant_id=tenant).created[0]
    amended = _correct(engine, tenant, event.id, "amend", [{**item, "quantity": "30"}], reason="call ended earlier")
    assert amended.difference == D("2.5") and amended.credit_note_id is not None
    with UnitOfWork(engine) as uow:
        note = credit_notes.get_credit_note(uow, tenant, amended.credit_note_id)
        invoice_number = invoices.get_invoice(uow, tenant, invoice_id).number
    assert note.kind == "credit_note" and note.amount == D("2.5")
    assert (note.corrects_invoice_id, note.corrects_invoice_number) == (invoice_id, invoice_number)
    assert note.period_label == closed.label
    assert note.number.startswith("LAD-") and note.number != invoice_number
    assert [(line["quantityBefore"], line["amountBefore"], line["quantityAfter"], line["amountAfter"])
            for line in note.lines] == [("40", "10", "30", "7.5")]
    # a void of what is left: a second note, numbered after the first
    void = _correct(engine, tenant, event.id, "void", reason="test call")
    with UnitOfWork(engine) as uow:
        second = credit_notes.get_credit_note(uow, tenant, void.credit_note_id)
        listed, _ = credit_notes.list_credit_notes(uow, tenant, limit=10)
    assert second.amount == D("7.5") and second.number > note.number
    assert [n.id for n in listed] == [second.id, note.id]
    assert "call ended earlier" in credit_note_csv(note)
    pdf = credit_note_pdf(note)
    assert pdf.startswith(b"%PDF")
    from billing_core.exports.parquet import table_for

    with UnitOfWork(engine) as uow:  # the finance export carries the notes with the documents
        exported = table_for(uow, "documents", note.issued_at.date(), tenant).to_pylist()
    assert {(d["number"], d["document_type"], d["gross"]) for d in exported} >= {
        (note.number, "credit_note", D("2.5")), (second.number, "credit_note", D("7.5"))}
    (tmp_path / "note.pdf").write_bytes(pdf)
    with UnitOfWork(engine) as uow:
        assert not [m for m in reconciliation.reconcile(uow).mismatches if m.get("tenantId") == tenant]
    _verified(engine, tenant)
    # the open month's invoice carries both corrections as prior-period correction lines
    open_month = Period.containing(clock.now())
    to_next_month(clock)
    with UnitOfWork(engine) as uow:
        assert len(invoices.rollup(uow, open_month, tenant_id=tenant).created) == 1
    lines = [line for line in invoice_lines(engine, tenant, open_month.first_day) if line.line_type == "correction"]
    assert [(line.prior_period, line.exact_amount) for line in lines] == [(True, D(10))]
