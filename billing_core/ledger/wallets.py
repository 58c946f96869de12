"""Wallets and the append-only ledger: every change of a balance is one ledger entry, written in
the same transaction as the balance update, with the wallet row locked."""
from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from billing_core import money
from billing_core.catalog import CURRENCY
from billing_core.db import UnitOfWork
from billing_core.errors import ValidationFailed
from billing_core.ledger.model import EntryType, LedgerEntry, Wallet, WalletStatus
from billing_core.ledger.tables import ledger_entries, wallets


def ensure_wallet(uow: UnitOfWork, tenant_id: str) -> None:
    """Create the tenant's wallet with a zero balance unless it exists."""
    uow.connection.execute(
        insert(wallets)
        .values(id=uuid.uuid4(), tenant_id=tenant_id, currency=CURRENCY, current_balance=0,
                reserved_balance=0, overdraft_limit=0, status=WalletStatus.ACTIVE,
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
            ledger_entries.c.entry_type == EntryType.DEBIT,
        )
    ).one_or_none()
    return LedgerEntry(**row._mapping) if row else None


def change_settings(uow: UnitOfWork, tenant_id: str, *, status: str | None, overdraft_limit: Decimal | None,
                    clear_flag: bool) -> Wallet:
    """Block or unblock a wallet, set its overdraft, clear its flag, under the wallet's lock; commits
    and returns the wallet as changed. Lowering the overdraft below what is in use is refused, and so
    is clearing the flag of a wallet still below what its overdraft allows."""
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
    changed = get_wallet(uow, tenant_id)
    uow.commit()
    return changed


def available_at_or_below_zero(connection: Connection, tenant_id: str) -> bool:
    """Whether the tenant's available balance is at or below zero (no wallet yet counts as zero): one
    indexed read, without the wallet's lock and without creating the wallet (the rate limiter's
    question before a hold)."""
    available = connection.execute(
        select(wallets.c.current_balance - wallets.c.reserved_balance).where(wallets.c.tenant_id == tenant_id)
    ).scalar_one_or_none()
    return available is None or available <= 0
