"""The agency scenario (issue 21): 100 prepaid sub-accounts of one agency charging at once. Every charge
of a sub-account moves two wallets in one transaction — its own at the resale price, then its
agency's at the agency's price — so all of them contend on the one agency wallet. Same shape as the
spread scenario (batches of POST /charges naming each tenant, group commit), reported as charges/s
and its ratio to the spread figure of the same run (target >= 0.5)."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

SUB_ACCOUNTS = int(os.environ.get("BENCH_AGENCY_SUB_ACCOUNTS", "100"))
CHARGES = int(os.environ.get("BENCH_AGENCY_CHARGES", "20000"))
TARGET = 0.5


def _call(client: Any, method: str, path: str, body: dict[str, Any], expect: int = 200) -> None:
    client.connection.request(method, path, body=json.dumps(body).encode(), headers=client.headers)
    response = client.connection.getresponse()
    answer = response.read()
    assert response.status == expect, answer[:300]


def scenario(bench: Any, token: Callable[..., str], spread_per_s: float | None) -> dict[str, Any]:
    from bench.run import Http

    agency = f"agency-{bench.run}"
    _call(Http(bench.port, token(agency, "billing.admin")), "PATCH", "/api/billing/wallet", {"reseller": True})
    manage = Http(bench.port, token(agency, "billing.manage"))
    _call(manage, "PUT", "/api/billing/sub-accounts/prices", {"multiplier": "1.3"})
    subs = []
    for n in range(SUB_ACCOUNTS):
        _call(manage, "POST", "/api/billing/sub-accounts", {"name": f"s{n}", "funding": "prepaid"}, 201)
        subs.append(f"{agency}:s{n}")
    bench.fund([agency, *subs])
    per_sub = CHARGES // SUB_ACCOUNTS
    count = per_sub * SUB_ACCOUNTS
    # the spread scenario's shape: one batch per tenant, so the difference is the agency's wallet
    bodies = [body for sub in subs for body in bench.batch_bodies(sub, per_sub, per_sub, sub, with_tenant=True)]
    ingest = bench.post_batches(bodies, token("bench-ops", "billing.admin"), threads=4)
    settled = bench.wait_settled(subs, count)
    per_s = count / settled["seconds"]
    return {"per_s": round(per_s, 1), "charges": count, "sub_accounts": SUB_ACCOUNTS,
            "ingest_seconds": round(ingest, 2), "commit_p99_ms": round(settled["commit_p99_ms"], 1),
            "ratio_to_spread": round(per_s / spread_per_s, 3) if spread_per_s else None, "target_ratio": TARGET}
