"""JSON that never makes a float: numbers arrive as Decimal (or int), amounts leave as strings."""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from flask.json.provider import DefaultJSONProvider

from billing_core import money


class BillingJSONProvider(DefaultJSONProvider):
    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        # NaN and Infinity become non-finite Decimals so validation can name the field they are in
        return json.loads(s, parse_float=Decimal, parse_constant=Decimal, **kwargs)

    @staticmethod
    def default(o: Any) -> Any:
        if isinstance(o, Decimal):
            return money.format_decimal(o)
        return DefaultJSONProvider.default(o)
