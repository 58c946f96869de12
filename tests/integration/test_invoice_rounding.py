"""Invoice arithmetic in SQL against the real database."""
from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import text


def test_half_even_rounding_in_sql_is_python_s(engine):
    values = [Decimal(v) for v in ("0.125", "0.135", "-0.125", "-0.135", "0.005", "0.015", "0.0050001", "2.5",
                                   "3.5", "-2.5", "0.994999", "0.995", "1.005", "123456789.125", "0", "-0.004999")]
    with engine.connect() as connection:
        for places in (0, 2, 3):
            got = connection.execute(text("SELECT round_half_even(v, :p) FROM unnest(CAST(:vs AS numeric[])) AS v"),
                                     {"p": places, "vs": values}).scalars().all()
            want = [v.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN) for v in values]
            assert got == want, places
