"""The database engine as the service builds it."""
from __future__ import annotations

import pytest
from sqlalchemy import text


def test_the_engine_hides_sql_parameters(engine):
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError) as failed, engine.connect() as connection:
        connection.execute(text("SELECT CAST(:v AS text), 1 / 0"), {"v": "secret-parameter-42"})
    assert "secret-parameter-42" not in str(failed.value)
