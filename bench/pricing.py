"""The hot-wallet scenario with priced items: the same shape as the flat-priced run (one wallet, one
item per charge, batches of 1,000 through POST /charges, group commit), but its items are graduated
(tiers over the month's tokens, crossed during the run) and packaged (15-second blocks with a
minimum). Reported beside the flat run of the same bench run: the target is >= 85% of its charges/s."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

GRADUATED = {"category": "llm", "provider": "bench", "model": "tiered", "unit": "token"}
PACKAGED = {"category": "telephony", "provider": "bench", "model": "blocks", "unit": "second"}


def _prices(tenant: str) -> list[dict[str, Any]]:
    return [
        {**GRADUATED, "tenantId": tenant, "pricingModel": "graduated",
         "tiers": [{"upTo": "200000", "unitPrice": "0.00003"}, {"upTo": "1000000", "unitPrice": "0.00002"},
                   {"upTo": None, "unitPrice": "0.00001"}]},
        {**PACKAGED, "tenantId": tenant, "pricingModel": "package", "packageSize": "15", "packagePrice": "0.004",
         "minimumQuantity": "60"},
    ]


def scenario(bench: Any, token: Callable[..., str], count: int, flat_per_s: float) -> dict[str, Any]:
    """Charges/s of a hot wallet whose items are graduated and packaged, and its ratio to the flat run."""
    from bench.run import Http

    tenant = "hot-priced"
    admin = Http(bench.port, token("bench-ops", "billing.admin"))
    for price in _prices(tenant):
        admin.connection.request("PUT", "/api/billing/pricing", body=json.dumps(price).encode(), headers=admin.headers)
        response = admin.connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
    bench.fund([tenant])
    bodies = []
    for start in range(0, count, 1000):
        events = [{"featureKey": "bench", "idempotencyKey": f"{tenant}-{i}",
                   "items": [{**GRADUATED, "quantity": "100"} if i % 2 else {**PACKAGED, "quantity": "37"}]}
                  for i in range(start, min(start + 1000, count))]
        bodies.append(json.dumps({"events": events}).encode())
    ingest = bench.post_batches(bodies, token(tenant, "billing.charge"), threads=2)
    settled = bench.wait_settled([tenant], count)
    per_s = count / settled["seconds"]
    return {"group_commit_per_s": round(per_s, 1), "charges": count, "ingest_seconds": round(ingest, 2),
            "burst_commit_p99_ms": round(settled["commit_p99_ms"], 1),
            "ratio_to_flat": round(per_s / flat_per_s, 3), "target_ratio": 0.85}
