"""`make console`: print a link to the operators' console of the stack `make run` started (its database
is in .data/stack.env, unless DATABASE_URL is set); with TENANT=..., also a link to that tenant's
portal. PORT is the web port `make run` was given (default 3004)."""
from __future__ import annotations

import argparse
import os
import sys

from devstack.run import DATA_DIR


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenant", default="")
    parser.add_argument("--ttl-minutes", type=int, default=60)
    args = parser.parse_args(argv)
    stack_env = DATA_DIR / "stack.env"
    if not os.environ.get("DATABASE_URL"):
        if not stack_env.exists():
            print("no running stack: start `make run` first (or set DATABASE_URL)", file=sys.stderr)
            return 2
        for line in stack_env.read_text().splitlines():
            key, _, value = line.partition("=")
            os.environ.setdefault(key, value)
    from billing_core.access import sessions
    from billing_core.bootstrap import settings as service_settings
    from billing_core.db import UnitOfWork, engine_for

    base = os.environ.get("LAD_PUBLIC_URL") or f"http://localhost:{os.environ.get('PORT') or '3004'}"
    engine = engine_for(service_settings().database_url)
    with UnitOfWork(engine) as uow:
        console = sessions.create_console_session(uow, ttl_minutes=args.ttl_minutes, created_by="make console")
    print(f"Console (valid {args.ttl_minutes} minutes): {base}/console/open?token={console.token}")
    if args.tenant:
        with UnitOfWork(engine) as uow:
            portal = sessions.create_portal_session(uow, args.tenant, ttl_minutes=args.ttl_minutes,
                                                    created_by="make console")
        print(f"Portal of {args.tenant}: {base}/portal/open?token={portal.token}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
