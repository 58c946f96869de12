"""JWT claims as a token issuer writes them, for the token tests."""
from __future__ import annotations

import time


def claims(tenant: str, **extra):
    return {"sub": "x", "tenantId": tenant, "capabilities": ["billing.admin"], "exp": int(time.time()) + 600, **extra}
