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


def main() -> int:
    """`python -m bench.pricing [charges]`: only this comparison, flat then priced then flat again, on
    one stack (a quick check; `make bench` reports it beside every other figure)."""
    import sys
    import uuid

    from bench.run import Bench, token
    from billing_core.db import dispose_engines
    from devstack.stack import drop_database

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    bench = Bench()
    bench.stack.start_servers()
    bench.stack.migrate()
    bench.start("group")
    try:
        flat = [bench.hot_wallet(f"group-{uuid.uuid4().hex[:6]}", count)["per_s"]]
        priced = scenario(bench, token, count, flat[0])
        flat.append(bench.hot_wallet(f"group-{uuid.uuid4().hex[:6]}", count)["per_s"])
        mean = sum(flat) / 2
        print(f"flat {flat[0]:,.0f} and {flat[1]:,.0f} charges/s; graduated + packaged "
              f"{priced['group_commit_per_s']:,.0f} charges/s = {priced['group_commit_per_s'] / mean:.0%} of flat")
    finally:
        bench.stop_service()
        dispose_engines()
        if bench.stack.server_url:
            drop_database(bench.stack.server_url, bench.stack.database_name)
        if bench.stack.servers is not None:
            bench.stack.servers.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
