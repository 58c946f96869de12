"""Engine per process and the unit of work every use case runs in."""
from __future__ import annotations

import functools
import threading
import time
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
    TextClause,
    Uuid,
    create_engine,
    event,
    exc,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url

from billing_core import exactjson

if TYPE_CHECKING:  # the wiring point builds engines from here; only its type is needed
    from billing_core.bootstrap import Settings

# UTC timestamps everywhere; a stuck lock or statement fails the unit of work instead of
# holding a wallet row forever (a failed charge stays pending and is retried).
SESSION_OPTIONS = "-c timezone=UTC -c lock_timeout=10s -c statement_timeout=60s -c idle_in_transaction_session_timeout=60s"

# A pooled connection that sat unused this long is tried with a round trip before it is handed out
# (the server may have restarted or dropped it meanwhile); one in steady use is not. SQLAlchemy's
# pool_pre_ping would ping on every checkout: under load that was ~12% of a POST /charge's wall time and
# a round trip per unit of work (bench/PROFILE.md). A connection that breaks in use still fails that
# one unit of work and invalidates the pool, as it would with pre-ping.
IDLE_PING_SECONDS = 5.0

# A database host that dies or is cut off sends no reset: without these a connection to it would wait on
# the kernel's defaults (hours for an idle socket, ~15 minutes for unacknowledged data). With them a
# connection to a vanished primary fails within ~15 s (keepalives: 5 s idle, then 3 probes 3 s apart;
# tcp_user_timeout: 15 s of unacknowledged data), the pool drops it, and the next connection finds the
# new primary (libpq's multi-host DATABASE_URL with target_session_attrs=read-write).
TCP_OPTIONS = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 3, "keepalives_count": 3,
               "tcp_user_timeout": 15000}
# per host tried: a URL naming several hosts tries each in turn, so a dead one must not cost long
CONNECT_TIMEOUT_SECONDS, CONNECT_TIMEOUT_PER_HOST_SECONDS = 5, 2

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
                pool_timeout=10,
                # SQL parameters (payloads, metadata, secrets) never appear in exception text or logs
                hide_parameters=True,
                json_serializer=exactjson.dumps,
                json_deserializer=exactjson.loads,
                connect_args={"connect_timeout": _connect_timeout(database_url), "options": SESSION_OPTIONS,
                              **TCP_OPTIONS},
            )
            event.listen(engine, "checkin", _checked_in)
            event.listen(engine, "checkout", _ping_if_idle)
            _engines[database_url] = engine
        return engine


def _connect_timeout(database_url: str) -> int:
    hosts = make_url(database_url).query.get("host", ())
    several = not isinstance(hosts, str) and len(hosts) > 1
    return CONNECT_TIMEOUT_PER_HOST_SECONDS if several else CONNECT_TIMEOUT_SECONDS


def read_engine(settings: Settings) -> Engine:
    """The engine for the heavy reads that may lag the primary by a moment: usage history and summaries,
    transaction listings, stored invoices, reconciliation's scans, margins and reports. The streaming
    replica READ_DATABASE_URL names, or the primary when it names none. Never for a write, a read inside
    a money transaction, or a read of what the same request just wrote (a charge's outcome, a wallet it
    changed): those use `engine_for(settings.database_url)`. A replica serves no temporary tables, so
    SQL that creates them (the invoice rollup and its preview) stays on the primary too."""
    return engine_for(settings.read_database_url or settings.database_url)


def _checked_in(dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """SQLAlchemy's recipe for pessimistic disconnect handling, for idle connections only: a
    DisconnectionError makes the pool discard this connection and hand out a fresh one."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_connection.rollback()  # the ping's implicit transaction is not the unit of work's
    except Exception as error:  # any failure of the driver here means the connection is gone
        raise exc.DisconnectionError() from error


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


@functools.lru_cache(maxsize=256)
def cached_text(sql: str) -> TextClause:
    """`text(sql)`, built once per distinct statement: parsing a statement's bind parameters and
    computing its cache key cost ~5% of a web worker's CPU when redone on every request
    (bench/PROFILE.md). For statements whose text is fixed or drawn from a few shapes."""
    return text(sql)


def unnest_arrays(table: Table, rows: list[dict[str, Any]], alias: str = "rows") -> tuple[str, dict[str, list[Any]]]:
    """`unnest(...) WITH ORDINALITY AS alias(columns, ordinality)` over one array per column of `rows`,
    and its parameters: many rows in one statement whose text does not grow with the row count."""
    return unnest_columns(table, {name: [row[name] for row in rows] for name in rows[0]}, alias)


def unnest_columns(table: Table, columns: dict[str, list[Any]], alias: str = "rows") -> tuple[str, dict[str, list[Any]]]:
    """unnest_arrays for rows given column by column (one list per column, all as long), which the
    batch paths build without making a dict per row first."""
    types = {name: _array_type(table.c[name]) for name in columns}
    params = {f"{alias}_{name}": _array_values(types[name], values) for name, values in columns.items()}
    arrays = ", ".join(f"CAST(:{alias}_{name} AS {types[name]}[])" for name in columns)
    names = ", ".join(f'"{name}"' for name in columns)
    return f"unnest({arrays}) WITH ORDINALITY AS {alias}({names}, ordinality)", params


def insert_rows(uow: UnitOfWork, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert many rows with one statement."""
    if rows:
        source, params = unnest_arrays(table, rows)
        columns = ", ".join(f'"{name}"' for name in rows[0])
        select_list = ", ".join(f'rows."{name}"' for name in rows[0])
        uow.connection.execute(cached_text(
            f"INSERT INTO {table.name} ({columns}) SELECT {select_list} FROM {source} ORDER BY rows.ordinality"
        ), params)


metadata = MetaData()


# Numeric without precision: PostgreSQL NUMERIC stores every digit it is given, so nothing rounds.
Money = Numeric(asdecimal=True)
