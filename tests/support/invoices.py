"""A tenant's money written by billing_core at chosen past times, for the invoice and page tests.

Ledger entries are append-only (the database refuses UPDATE), and billing_core writes them with
created_at = now(). `ledger_dated(t)` makes WalletBook.flush's INSERT of ledger entries carry created_at
= t, as if the transaction had run at t; usage events, which are not append-only, get the times those
transactions would have given them by UPDATE."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import text

from billing_core.db import UnitOfWork
from billing_core.invoicing.invoices import Period
from billing_core.ledger import book, credits, expiry
from billing_core.ledger.book import WalletBook
from billing_core.ledger.commands import AdjustmentRequest, RefundRequest, TopUpRequest
from billing_core.ledger.tables import ledger_entries
from billing_core.lifecycle import holds
from billing_core.lifecycle.commands import ReleaseReservationRequest, ReservationRequest
from billing_core.usage import charging, events
from billing_core.usage.commands import ChargeRequest

CENT = Decimal("0.01")


PRICES = {  # the default catalog (billing_core.catalog.DEFAULT_CATALOG)
    ("stt", "openai", "whisper-1", "second"): Decimal("0.0001"),
    ("llm_prompt", "openai", "gpt-4", "token"): Decimal("0.00003"),
    ("llm_completion", "openai", "gpt-4", "token"): Decimal("0.00006"),
    ("tts", "openai", "tts-1", "character"): Decimal("0.000015"),
    ("telephony", "twilio", "voice", "minute"): Decimal("0.013"),
}


STT = ("stt", "openai", "whisper-1", "second")


PROMPT = ("llm_prompt", "openai", "gpt-4", "token")


COMPLETION = ("llm_completion", "openai", "gpt-4", "token")


TTS = ("tts", "openai", "tts-1", "character")


CALL = ("telephony", "twilio", "voice", "minute")


def half_even(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def items(*entries: tuple[tuple[str, str, str, str], str]) -> list[dict[str, str]]:
    return [{"category": c, "provider": p, "model": m, "unit": u, "quantity": q} for (c, p, m, u), q in entries]


def months() -> tuple[Period, Period]:
    """The month under test (the previous one, closed) and the current one (open)."""
    current = Period.containing(datetime.now().astimezone())
    return current.previous(), current


_flush_lock = threading.Lock()


@contextmanager
def ledger_dated(moment: datetime) -> Iterator[None]:
    """Ledger entries that billing_core writes in this process get created_at = moment: WalletBook.flush's
    own INSERT, with the time given instead of now()."""
    original = book.insert_rows

    def dated(uow: UnitOfWork, table: Any, rows: list[dict[str, Any]]) -> None:
        if table is ledger_entries:
            rows = [{**row, "created_at": moment} for row in rows]
        original(uow, table, rows)

    with _flush_lock:
        book.insert_rows = dated
        try:
            yield
        finally:
            book.insert_rows = original


class History:
    """One tenant's money, written by billing_core as at the times given."""

    def __init__(self, engine: Any, tenant: str):
        self.engine, self.tenant = engine, tenant
        self.charges: list[dict[str, Any]] = []  # feature, items, accepted_at, debit id, event id

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self.engine)

    def top_up(self, at: datetime, amount: str, kind: str = "paid") -> None:
        with ledger_dated(at), self.uow() as uow:
            credits.top_up(uow, self.tenant, TopUpRequest(amount=amount, kind=kind, idempotencyKey=str(uuid.uuid4())),
                           created_by="test")

    def adjust(self, at: datetime, amount: str) -> None:
        with ledger_dated(at), self.uow() as uow:
            credits.adjust(uow, self.tenant, AdjustmentRequest(amount=amount, reason="goodwill",
                                                               idempotencyKey=str(uuid.uuid4())), created_by="test")

    def refund(self, at: datetime, debit_id: uuid.UUID, amount: str) -> None:
        with ledger_dated(at), self.uow() as uow:
            credits.refund(uow, self.tenant, RefundRequest(transactionId=debit_id, amount=amount, reason="dropped call",
                                                           idempotencyKey=str(uuid.uuid4())), created_by="test")

    def hold(self, at: datetime, feature: str, amount: str) -> uuid.UUID:
        with ledger_dated(at), self.uow() as uow:
            result = holds.reserve(uow, self.tenant, ReservationRequest(
                featureKey=feature, amount=amount, ttlSeconds=3600, idempotencyKey=str(uuid.uuid4())),
                created_by="test")
        return result.hold.id

    def release(self, at: datetime, reservation_id: uuid.UUID) -> None:
        with ledger_dated(at), self.uow() as uow:
            holds.release(uow, self.tenant, reservation_id, ReleaseReservationRequest(), created_by="test")

    def expired_promotion(self, at: datetime, amount: str) -> None:
        """A promotional grant past its expiry, ended in the same transaction (so the beat expiry job,
        which would date its expiry now, cannot race it): a top-up and an expiry in the ledger."""
        with ledger_dated(at), self.uow() as uow:
            book = WalletBook.open(uow, self.tenant)
            book.add_grant(Decimal(amount), kind="promotional", source="topup", expires_at=book.now - timedelta(seconds=1),
                           description="launch promotion")
            assert expiry.end_due(book) == 1
            book.flush()
            uow.commit()

    def accept(self, accepted_at: datetime, feature: str, lines: list[dict[str, str]],
               reservation_id: uuid.UUID | None = None) -> uuid.UUID:
        command = ChargeRequest.model_validate({"featureKey": feature, "items": lines,
                                                "idempotencyKey": str(uuid.uuid4()),
                                                "reservationId": str(reservation_id) if reservation_id else None})
        with self.uow() as uow:
            event = events.accept_charge(uow, self.tenant, command, user_id="test").event
        with self.engine.begin() as connection:  # accepted then (usage events are not append-only)
            connection.execute(text("UPDATE usage_events SET created_at = :at, occurred_at = :at "
                                    "WHERE tenant_id = :t AND id = :id"),
                               {"at": accepted_at, "t": self.tenant, "id": event.id})
        return event.id

    def charge(self, at: datetime, feature: str, lines: list[dict[str, str]],
               reservation_id: uuid.UUID | None = None, accepted_at: datetime | None = None) -> uuid.UUID:
        """Accept and charge one event at `at` (the debit and the event's charged_at both dated `at`,
        as one charging transaction gives them one now()); returns the debit's id."""
        event_id = self.accept(accepted_at or at - timedelta(seconds=1), feature, lines, reservation_id)
        with ledger_dated(at), self.uow() as uow:
            settled = charging.charge_pending_batch(uow, self.tenant, 100)
        assert [(s.usage_event_id, s.status) for s in settled] == [(event_id, "charged")]
        with self.engine.begin() as connection:
            connection.execute(text("UPDATE usage_events SET charged_at = :at WHERE tenant_id = :t AND id = :id"),
                               {"at": at, "t": self.tenant, "id": event_id})
            # a sub-account's charge: the agency's record of it keeps the event's charge time too
            connection.execute(text("UPDATE agency_charges SET charged_at = :at "
                                    "WHERE tenant_id = :agency AND usage_event_id = :id AND sub_account_id = :t"),
                               {"at": at, "agency": self.tenant.rpartition(":")[0], "t": self.tenant, "id": event_id})
            debit_id = connection.execute(text(
                "SELECT id FROM ledger_entries WHERE tenant_id = :t AND usage_event_id = :id AND entry_type = 'debit'"),
                {"t": self.tenant, "id": event_id}).scalar_one()
        self.charges.append({"feature": feature, "items": lines, "event": event_id, "debit": debit_id})
        return debit_id
