"""JSON whose numbers are exact: parsed as Decimal (never float), written back as the same digits.

Used for request bodies and for jsonb columns (usage metadata), so a client's `"duration": 45.5`
is stored and returned as 45.5, and NaN/Infinity reach validation as non-finite Decimals.
"""
from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import simplejson


def loads(text: str | bytes) -> Any:
    return simplejson.loads(text, use_decimal=True, parse_constant=Decimal)


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> str:
    return simplejson.dumps(value, use_decimal=True, default=default, ensure_ascii=False,
                            separators=(",", ":"), allow_nan=False)

