"""Graduated tiers, fresh catalog items and price changes over HTTP, for the pricing and page tests."""
from __future__ import annotations

import uuid
from decimal import Decimal

from tests.support.helpers import Api

D = Decimal


TIERS = [{"upTo": "1000", "unitPrice": "0.01"}, {"upTo": "5000", "unitPrice": "0.005"},
         {"upTo": None, "unitPrice": "0.001"}]


def at_once(total: Decimal, tiers=TIERS) -> Decimal:  # noqa: ANN001
    """The graduated price of a month's total, computed in one go (the test's own arithmetic)."""
    cost, floor = D(0), D(0)
    for tier in tiers:
        ceiling = D(tier["upTo"]) if tier["upTo"] is not None else None
        if ceiling is None or total > floor:
            portion = (min(total, ceiling) if ceiling is not None else total) - floor
            cost += max(portion, D(0)) * D(tier["unitPrice"])
        if ceiling is not None:
            floor = ceiling
    return cost


def new_item(category: str = "llm") -> dict[str, str]:
    """A catalog item of its own (categories start with test_: other tests tell them from the default catalog)."""
    return {"category": f"test_{category}", "provider": "acme", "model": f"m-{uuid.uuid4().hex[:10]}",
            "unit": "token"}


def put_price(api: Api, admin: str, item: dict[str, str], **terms) -> dict:  # noqa: ANN003
    response = api.request("PUT", "/api/billing/pricing", admin, json={**item, **terms})
    assert response.status_code == 200, response.text
    return response.json()["price"]
