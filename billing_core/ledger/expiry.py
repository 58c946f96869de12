"""Expiry: holds past their TTL and credits past their expiry end here, and only here.

The one rule is `end_due` (on a locked WalletBook); the entry points are the beat job's
(`tenants_with_due` then `expire_due`, wallet by wallet), the charging path's and the hold and
adjustment paths' (`end_due` on the book they already hold), and the read path's
(`end_due_and_read_wallet` for GET /wallet and the pages, `end_what_is_due` for the open month's
draft): a present-tense answer must not show what has expired as still there merely because the beat
job has not come round yet.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from decimal import Decimal

from sqlalchemy import Boolean, column, select, text

from billing_core import money
from billing_core.db import UnitOfWork, cached_text
from billing_core.ledger.book import WalletBook, read_live_grants
from billing_core.ledger.model import Grant, HoldStatus, Wallet
from billing_core.ledger.tables import wallets
from billing_core.ledger.wallets import get_wallet

ZERO = Decimal(0)


def end_due(book: WalletBook, keep: Iterable[uuid.UUID] = ()) -> int:
    """Expire the book's holds past their TTL (except `keep` and holds a pending charge made in time
    will settle), then its grants past their expiry. Holds are honoured: debits draw on overdue grants
    first, so the overdue credit backs the active holds, and only what exceeds the reserved balance
    expires now; the rest expires once the holds end. Returns how many things expired; the caller
    flushes the book and commits."""
    kept = set(keep) | book.awaiting
    count = 0
    for hold in list(book.holds.values()):
        if hold.status == HoldStatus.ACTIVE and hold.expires_at <= book.now and hold.id not in kept:
            book.close_hold(hold, HoldStatus.EXPIRED)
            count += 1
    backing = max(book.reserved, ZERO)
    for grant in book.live_grants():
        if not grant.overdue(book.now):
            break  # overdue grants come first in draw order
        kept_back = min(grant.remaining, backing)
        backing = money.subtract(backing, kept_back)
        amount = money.subtract(grant.remaining, kept_back)
        if amount > 0:
            book.expire_grant(grant, amount)
            count += 1
    return count


def expire_due(uow: UnitOfWork, tenant_id: str) -> int:
    """The beat job's step for one wallet: end what is due; commits. Running it twice, or while a
    charge settles, is harmless: it works under the wallet lock and only on what is still due."""
    book = WalletBook.open(uow, tenant_id)
    expired = end_due(book)
    book.flush()
    uow.commit()
    return expired


def tenants_with_due(uow: UnitOfWork, limit: int = 1000) -> list[str]:
    """Tenants with a hold past its TTL, or with credits past their expiry beyond what backs their
    holds (the rest cannot expire yet): the expiry job's deliberately cross-tenant query, over two
    partial indexes, most overdue first."""
    return list(uow.connection.execute(text("""
        SELECT tenant_id /* citus:operator-scan expiry-candidates */ FROM (
            SELECT tenant_id, min(expires_at) AS due FROM reservations
            WHERE status = 'active' AND expires_at <= now() GROUP BY tenant_id
            UNION ALL
            SELECT g.tenant_id, min(g.expires_at) FROM credit_grants g
            JOIN wallets w ON w.tenant_id = g.tenant_id AND w.id = g.wallet_id
            WHERE g.remaining > 0 AND g.expires_at <= now()
            GROUP BY g.tenant_id, w.reserved_balance HAVING sum(g.remaining) > w.reserved_balance
        ) due GROUP BY tenant_id ORDER BY min(due) LIMIT :limit
    """), {"limit": limit}).scalars())


# what tenants_with_due asks, for one tenant: a hold past its TTL, or overdue credit beyond the holds
_DUE = """EXISTS (SELECT 1 FROM reservations WHERE tenant_id = :t AND status = 'active' AND expires_at <= now())
            OR coalesce((SELECT sum(remaining) FROM credit_grants
                         WHERE tenant_id = :t AND remaining > 0 AND expires_at <= now()), 0) > {reserved}"""
# typed like select(wallets) (ids as UUIDs), columns named in the table's order
_WALLET_AND_DUE = text(
    f"SELECT {', '.join('w.' + c.name for c in wallets.c)}, {_DUE.format(reserved='w.reserved_balance')} AS due "
    "FROM wallets w WHERE w.tenant_id = :t").columns(*wallets.c, column("due", Boolean))


def end_due_and_read_wallet(uow: UnitOfWork, tenant_id: str) -> tuple[Wallet, list[Grant]]:
    """The read path's use case (GET /wallet, the portal, the console): the wallet (created on first
    use) and its live grants, read without the wallet's row lock — unless a hold or credits are past
    their expiry: then they end first, under the lock, as the beat job would end them, so the balance
    shown is the one a charge would meet. Commits (what ended, and a wallet created by asking)."""
    # one statement for the wallet and whether anything is due (the wallet is created only when
    # missing), the grants in the same transaction: 3 round trips instead of 7 (bench/PROFILE.md)
    row = uow.connection.execute(_WALLET_AND_DUE, {"t": tenant_id}).one_or_none()
    if row is None:
        get_wallet(uow, tenant_id)
        row = uow.connection.execute(_WALLET_AND_DUE, {"t": tenant_id}).one()
    values = dict(row._mapping)
    due = values.pop("due")
    wallet = Wallet(**values)
    if due:
        wallet = _end_due_now(uow, tenant_id)
    grants = read_live_grants(uow, tenant_id)
    uow.commit()
    return wallet, grants


def end_what_is_due(uow: UnitOfWork, tenant_id: str, wallet: Wallet | None = None) -> Wallet | None:
    """End the holds past their TTL and the credits past their expiry now, under the wallet's lock, if
    there are any (the wallet after that), else nothing (and no lock). For answers about the present
    — the current month's draft — that must not show what has expired as still there. The caller
    commits."""
    if wallet is None:
        row = uow.connection.execute(select(wallets).where(wallets.c.tenant_id == tenant_id)).one_or_none()
        if row is None:
            return None  # no wallet, nothing to end (and none is created for asking)
        wallet = Wallet(**row._mapping)
    due = uow.connection.execute(cached_text(f"SELECT {_DUE.format(reserved=':reserved')}"),
                                 {"t": tenant_id, "reserved": wallet.reserved_balance}).scalar_one()
    if not due:
        return None
    return _end_due_now(uow, tenant_id)


def _end_due_now(uow: UnitOfWork, tenant_id: str) -> Wallet:
    book = WalletBook.open(uow, tenant_id)
    end_due(book)
    book.flush()
    return book.wallet
