"""A database clock the tests move instead of sleeping.

Every time LAD judges (a hold's TTL, a grant's expiry, a quote's validity, a pending charge's age) is the
database's `now()` or `clock_timestamp()`, read by the web, the worker and the tests alike. A test
database gets a schema `lad_test_clock` with its own `now()` and `clock_timestamp()` (PostgreSQL's plus
an offset kept in a one-row table), ahead of `pg_catalog` on the database's search_path. It is
installed before the migrations, so column defaults (`DEFAULT now()`) read it too. Production
databases never have it; production code knows nothing of it.

`TestClock.advance(seconds)` moves every process's clock at once, from the next statement on;
the `clock` fixtures put it back to zero after each test, so only the test that moved time sees it.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Engine

SCHEMA = "lad_test_clock"

INSTALL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.shift (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    by interval NOT NULL DEFAULT interval '0'
);
INSERT INTO {SCHEMA}.shift DEFAULT VALUES ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION {SCHEMA}.now() RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS
    $$ SELECT pg_catalog.now() + (SELECT by FROM {SCHEMA}.shift) $$;
CREATE OR REPLACE FUNCTION {SCHEMA}.clock_timestamp() RETURNS timestamptz LANGUAGE sql VOLATILE AS
    $$ SELECT pg_catalog.clock_timestamp() + (SELECT by FROM {SCHEMA}.shift) $$;
"""


def install(connection, database: str) -> None:  # noqa: ANN001 - a psycopg2 connection in autocommit
    """Install the clock in `database` (the connection's own): new sessions resolve now() to it."""
    with connection.cursor() as cursor:
        cursor.execute(INSTALL)
        # public first, so CREATE TABLE still lands there; the clock before pg_catalog, so it wins
        cursor.execute(f'ALTER DATABASE "{database}" SET search_path = "$user", public, {SCHEMA}, pg_catalog')


class TestClock:
    """The test database's clock: read it, move it forward, put it back."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, engine: Engine):
        self.engine = engine

    def now(self) -> datetime:
        """The time every process of the stack sees now."""
        with self.engine.connect() as connection:
            return connection.execute(text("SELECT now()")).scalar_one()

    def later(self, seconds: float) -> datetime:
        return self.now() + timedelta(seconds=seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward for every process at once (from each one's next statement)."""
        with self.engine.begin() as connection:
            connection.execute(text(f"UPDATE {SCHEMA}.shift SET by = by + make_interval(secs => :s)"),
                               {"s": seconds})

    def reset(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(f"UPDATE {SCHEMA}.shift SET by = interval '0'"))
