"""Wallets and the append-only ledger: every change of a balance is one ledger entry, written in
the same transaction as the balance update, with the wallet row locked."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert

from billing_core import money
from billing_core.catalog import CURRENCY
from billing_core.db import UnitOfWork
from billing_core.errors import ValidationFailed
from billing_core.ledger.tables import ledger_entries, wallets


@dataclass(frozen=True)
class Wallet:
    id: uuid.UUID
    tenant_id: str
    currency: str
    current_balance: Decimal
    reserved_balance: Decimal
    overdraft_limit: Decimal
    status: str
    created_at: datetime
    updated_at: datetime
    flagged_at: datetime | None = None
    flag_reason: str | None = None

    @property
    def available_balance(self) -> Decimal:
        return money.subtract(self.current_balance, self.reserved_balance)

    @property
    def spendable(self) -> Decimal:
        """What a debit may take: the available balance plus the overdraft allowed."""
        return money.add(self.available_balance, self.overdraft_limit)


@dataclass(frozen=True)
class LedgerEntry:
    id: uuid.UUID
    seq: int
    tenant_id: str
    wallet_id: uuid.UUID
    entry_type: str
    amount: Decimal
    balance_before: Decimal
    balance_after: Decimal
    usage_event_id: uuid.UUID | None
    reference: str | None
    description: str | None
    idempotency_key: str | None
    created_by: str | None
    created_at: datetime
    reserved_change: Decimal = Decimal(0)
    reservation_id: uuid.UUID | None = None
    grant_id: uuid.UUID | None = None
    related_entry_id: uuid.UUID | None = None


def ensure_wallet(uow: UnitOfWork, tenant_id: str) -> None:
    """Create the tenant's wallet with a zero balance unless it exists."""
    uow.connection.execute(
        insert(wallets)
        .values(id=uuid.uuid4(), tenant_id=tenant_id, currency=CURRENCY, current_balance=0,
                reserved_balance=0, overdraft_limit=0, status="active",
                created_at=func.now(), updated_at=func.now())
        .on_conflict_do_nothing(index_elements=[wallets.c.tenant_id])
    )


def get_wallet(uow: UnitOfWork, tenant_id: str, *, lock: bool = False) -> Wallet:
    """The tenant's wallet, created with a zero balance on first use; `lock` holds its row until commit."""
    ensure_wallet(uow, tenant_id)
    query = select(wallets).where(wallets.c.tenant_id == tenant_id)
    if lock:
        query = query.with_for_update()
    return Wallet(**uow.connection.execute(query).one()._mapping)


def append_entry(uow: UnitOfWork, wallet: Wallet, *, entry_type: str, amount: Decimal,
                 usage_event_id: uuid.UUID | None = None, reference: str | None = None,
                 description: str | None = None, idempotency_key: str | None = None,
                 created_by: str | None = None) -> LedgerEntry:
    """Write one ledger entry and move the wallet balance by `amount`.

    Invariant: the caller holds the wallet's row lock (get_wallet(lock=True)), so balance_before is
    the balance the previous entry left, and the wallet balance stays equal to the sum of its entries.
    """
    balance_after = money.add(wallet.current_balance, amount)
    row = uow.connection.execute(
        insert(ledger_entries)
        .values(id=uuid.uuid4(), tenant_id=wallet.tenant_id, wallet_id=wallet.id, entry_type=entry_type,
                amount=amount, balance_before=wallet.current_balance, balance_after=balance_after,
                usage_event_id=usage_event_id, reference=reference, description=description,
                idempotency_key=idempotency_key, created_by=created_by, created_at=func.now())
        .returning(*ledger_entries.c)
    ).one()
    uow.connection.execute(
        update(wallets)
        .where(wallets.c.tenant_id == wallet.tenant_id, wallets.c.id == wallet.id)
        .values(current_balance=balance_after, updated_at=func.now())
    )
    return LedgerEntry(**row._mapping)


def get_entry(uow: UnitOfWork, tenant_id: str, entry_id: uuid.UUID) -> LedgerEntry | None:
    row = uow.connection.execute(
        select(ledger_entries).where(ledger_entries.c.tenant_id == tenant_id, ledger_entries.c.id == entry_id)
    ).one_or_none()
    return LedgerEntry(**row._mapping) if row else None


def debit_for_event(uow: UnitOfWork, tenant_id: str, usage_event_id: uuid.UUID) -> LedgerEntry | None:
    row = uow.connection.execute(
        select(ledger_entries).where(
            ledger_entries.c.tenant_id == tenant_id,
            ledger_entries.c.usage_event_id == usage_event_id,
            ledger_entries.c.entry_type == "debit",
        )
    ).one_or_none()
    return LedgerEntry(**row._mapping) if row else None


def change_settings(uow: UnitOfWork, tenant_id: str, *, status: str | None, overdraft_limit: Decimal | None,
                    clear_flag: bool) -> None:
    """Block or unblock a wallet, set its overdraft, clear its flag; the caller holds the wallet lock.
    Lowering the overdraft below what is in use is refused."""
    wallet = get_wallet(uow, tenant_id, lock=True)
    values: dict = {"updated_at": func.now()}
    if status is not None:
        values["status"] = status
    if overdraft_limit is not None:
        if money.add(wallet.available_balance, overdraft_limit) < 0 and wallet.flagged_at is None:
            raise ValidationFailed("overdraftLimit", "is below the overdraft in use "
                                   f"({money.format_decimal(-wallet.available_balance)})")
        values["overdraft_limit"] = overdraft_limit
    if clear_flag:
        if money.add(wallet.available_balance, overdraft_limit if overdraft_limit is not None
                     else wallet.overdraft_limit) < 0:
            raise ValidationFailed("clearFlag", "the balance is still below what the overdraft allows")
        values.update(flagged_at=None, flag_reason=None)
    uow.connection.execute(update(wallets).where(wallets.c.tenant_id == tenant_id).values(**values))
