"""Top-ups: credits added to a wallet by an administrator, exactly once per idempotency key."""
from __future__ import annotations

from dataclasses import dataclass

from . import idempotency
from .commands import TopUpRequest, fingerprint_body
from .db import UnitOfWork
from .wallets import LedgerEntry, append_entry, get_entry, get_wallet


@dataclass(frozen=True)
class TopUpResult:
    entry: LedgerEntry
    replayed: bool


def top_up(uow: UnitOfWork, tenant_id: str, command: TopUpRequest, *, created_by: str | None) -> TopUpResult:
    """Credit the wallet and commit; a repeated key with the same request returns the first entry."""
    key = command.idempotencyKey
    earlier = idempotency.claim(
        uow, tenant_id, key, "topup", idempotency.fingerprint("topup", fingerprint_body(command))
    )
    if earlier is not None:
        assert earlier.ledger_entry_id is not None
        entry = get_entry(uow, tenant_id, earlier.ledger_entry_id)
        assert entry is not None
        return TopUpResult(entry, replayed=True)
    wallet = get_wallet(uow, tenant_id, lock=True)
    entry = append_entry(
        uow, wallet, entry_type="topup", amount=command.amount, reference=key,
        description=command.description, idempotency_key=key, created_by=created_by,
    )
    idempotency.record_ledger_entry(uow, tenant_id, key, entry.id)
    uow.commit()
    return TopUpResult(entry, replayed=False)
