"""Flask's JSON through billing_core.exactjson: request numbers arrive as Decimal, never float.
Amounts are written as strings by the response models (web.api.answers); only opaque client data (usage metadata)
carries Decimal numbers, which are written back with the digits they came with."""
from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider

from billing_core import exactjson


class BillingJSONProvider(DefaultJSONProvider):
    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return exactjson.loads(s)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return exactjson.dumps(obj, default=DefaultJSONProvider.default)
