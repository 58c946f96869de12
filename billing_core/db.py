"""Engine per process and the unit of work every use case runs in."""
from __future__ import annotations

import threading
from datetime import datetime
from types import TracebackType
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    Numeric,
    Table,
    Text,
    Uuid,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from . import exactjson
from .config import Settings

# UTC timestamps everywhere; a stuck lock or statement fails the unit of work instead of
# holding a wallet row forever (a failed charge stays pending and is retried).
SESSION_OPTIONS = "-c timezone=UTC -c lock_timeout=10s -c statement_timeout=60s -c idle_in_transaction_session_timeout=60s"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(database_url: str) -> Engine:
    """One pooled engine per URL and process, created on first use (so after any fork)."""
    with _engines_lock:
        engine = _engines.get(database_url)
        if engine is None:
            engine = create_engine(
                database_url,
                pool_size=10,
                max_overflow=20,
                pool_pre_ping=True,
                pool_timeout=10,
                # SQL parameters (payloads, metadata, secrets) never appear in exception text or logs
                hide_parameters=True,
                json_serializer=exactjson.dumps,
                json_deserializer=exactjson.loads,
                connect_args={"connect_timeout": 5, "options": SESSION_OPTIONS},
            )
            _engines[database_url] = engine
        return engine


def read_engine(settings: Settings) -> Engine:
    """The engine for the heavy reads that may lag the primary by a moment: usage history and summaries,
    transaction listings, stored invoices, reconciliation's scans, margins and reports. The streaming
    replica READ_DATABASE_URL names, or the primary when it names none. Never for a write, a read inside
    a money transaction, or a read of what the same request just wrote (a charge's outcome, a wallet it
    changed): those use `engine_for(settings.database_url)`. A replica serves no temporary tables, so
    SQL that creates them (the invoice rollup and its preview) stays on the primary too."""
    return engine_for(settings.read_database_url or settings.database_url)


def dispose_engines() -> None:
    """Drop pooled connections, e.g. in a freshly forked child that must not share sockets."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose(close=False)
        _engines.clear()


class UnitOfWork:
    """One database transaction. Exit rolls back unless `commit()` was called: commits are explicit."""

    def __init__(self, engine: Engine):
        self._engine = engine
        self.connection: Connection

    def __enter__(self) -> UnitOfWork:
        self.connection = self._engine.connect()
        self._transaction = self.connection.begin()
        return self

    def now(self) -> datetime:
        """The transaction's timestamp in the database: one clock for every process."""
        return self.connection.execute(select(func.now())).scalar_one()

    def commit(self) -> None:
        self._transaction.commit()

    def rollback(self) -> None:
        self._transaction.rollback()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self.connection.close()


_ARRAY_TYPES = [(Uuid, "uuid"), (BigInteger, "bigint"), (Integer, "integer"), (Numeric, "numeric"),
                (DateTime, "timestamptz"), (Boolean, "boolean"), (JSONB, "jsonb"), (Text, "text")]


def _array_type(column: Column) -> str:
    for sa_type, pg_type in _ARRAY_TYPES:
        if isinstance(column.type, sa_type):
            return pg_type
    raise TypeError(f"no array type for {column}")


def _array_values(pg_type: str, values: list[Any]) -> list[Any]:
    if pg_type == "jsonb":
        return [None if v is None else exactjson.dumps(v) for v in values]
    if pg_type == "uuid":
        return [None if v is None else str(v) for v in values]
    return values


def unnest_arrays(table: Table, rows: list[dict[str, Any]], alias: str = "rows") -> tuple[str, dict[str, list[Any]]]:
    """`unnest(...) WITH ORDINALITY AS alias(columns, ordinality)` over one array per column of `rows`,
    and its parameters: many rows in one statement whose text does not grow with the row count."""
    names = list(rows[0])
    types = {name: _array_type(table.c[name]) for name in names}
    params = {f"{alias}_{name}": _array_values(types[name], [row[name] for row in rows]) for name in names}
    arrays = ", ".join(f"CAST(:{alias}_{name} AS {types[name]}[])" for name in names)
    columns = ", ".join(f'"{name}"' for name in names)
    return f"unnest({arrays}) WITH ORDINALITY AS {alias}({columns}, ordinality)", params


def insert_rows(uow: UnitOfWork, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows with one statement."""
    if rows:
        source, params = unnest_arrays(table, rows)
        columns = ", ".join(f'"{name}"' for name in rows[0])
        select_list = ", ".join(f'rows."{name}"' for name in rows[0])
        uow.connection.execute(text(
            f"INSERT INTO {table.name} ({columns}) SELECT {select_list} FROM {source} ORDER BY rows.ordinality"
        ), params)
