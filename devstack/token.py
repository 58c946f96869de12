"""`make token TENANT=... CAPS=...`: print a bearer token signed with JWT_SECRET (or the one
`make run` generated in .data/)."""
from __future__ import annotations

import argparse
import os

from devstack.run import DATA_DIR
from devstack.stack import development_secret
from web.auth import TokenSettings, issue_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--caps", default="")
    parser.add_argument("--sub", default="dev-user")
    parser.add_argument("--ttl", type=int, default=30 * 24 * 3600)
    args = parser.parse_args()
    secret = os.environ.get("JWT_SECRET") or development_secret(DATA_DIR, "jwt_secret")
    settings = TokenSettings(secret, None, os.environ.get("JWT_ISSUER") or None, os.environ.get("JWT_AUDIENCE") or None)
    capabilities = [c.strip() for c in args.caps.split(",") if c.strip()]
    print(issue_token(settings, tenant_id=args.tenant, capabilities=capabilities, subject=args.sub,
                      ttl_seconds=args.ttl))


if __name__ == "__main__":
    main()
