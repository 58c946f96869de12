"""The test clock (tests/support/clock.py): moving it moves every `now()` the database gives, column
defaults included, and putting it back restores the real time."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text


def test_advancing_the_clock_moves_now_clock_timestamp_and_defaults(engine, clock, tenant):
    before = clock.now()
    clock.advance(3600)
    with engine.begin() as connection:
        now, ticking = connection.execute(text("SELECT now(), clock_timestamp()")).one()
        connection.execute(text("INSERT INTO wallets (id, tenant_id, current_balance) "
                                "VALUES (gen_random_uuid(), :t, 0)"), {"t": tenant})
        created = connection.execute(text("SELECT created_at FROM wallets WHERE tenant_id = :t"),
                                     {"t": tenant}).scalar_one()
    for moment in (now, ticking, created):
        assert timedelta(hours=1) <= moment - before < timedelta(hours=1, minutes=1), moment
    clock.reset()
    assert clock.now() - before < timedelta(minutes=1)
