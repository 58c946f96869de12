"""`make run`: the whole service in the foreground until SIGINT or SIGTERM."""
from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

from .stack import ROOT, Stack, development_secret

DATA_DIR = Path(os.environ.get("LAD_DATA_DIR") or ROOT / ".data")
DEMO_TENANT = "demo-tenant"


def demo_tokens(secret: str) -> dict[str, str]:
    from web.auth import TokenSettings, issue_token

    settings = TokenSettings(secret, None, os.environ.get("JWT_ISSUER") or None, os.environ.get("JWT_AUDIENCE") or None)
    caps = {
        "TOKEN": ["billing.charge", "billing.view"],      # a LAD feature's service account (seed: YOUR_JWT_TOKEN)
        "ADMIN_TOKEN": ["billing.admin"],                  # seed: ADMIN_JWT_TOKEN
        "VIEWER_TOKEN": ["billing.view"],
    }
    return {name: issue_token(settings, tenant_id=DEMO_TENANT, capabilities=c, subject=name.lower())
            for name, c in caps.items()}


def main() -> int:
    port = int(os.environ.get("PORT", "3004"))
    flower_port = int(os.environ.get("FLOWER_PORT", "5555"))
    production = os.environ.get("LAD_ENV", "development") == "production"
    if production and not (os.environ.get("JWT_SECRET") or os.environ.get("JWT_PUBLIC_KEY")):
        print("LAD_ENV=production needs JWT_SECRET or JWT_PUBLIC_KEY", file=sys.stderr)
        return 2
    if production and not os.environ.get("FLOWER_BASIC_AUTH"):
        print("LAD_ENV=production needs FLOWER_BASIC_AUTH", file=sys.stderr)
        return 2

    stack = Stack(DATA_DIR, database_name="lad_billing")
    generated_secret = not (os.environ.get("JWT_SECRET") or os.environ.get("JWT_PUBLIC_KEY"))
    if generated_secret:
        stack.env["JWT_SECRET"] = development_secret(DATA_DIR, "jwt_secret")
    flower_auth = os.environ.get("FLOWER_BASIC_AUTH") or development_secret(
        DATA_DIR, "flower_basic_auth", lambda: f"admin:{secrets.token_urlsafe(12)}")

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    logs = DATA_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        stack.start_servers()
        # where `make job` finds these servers
        (DATA_DIR / "stack.env").write_text("".join(
            f"{key}={stack.env[key]}\n" for key in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")))
        stack.migrate()
        stack.start_worker(concurrency=4)
        stack.start_beat()
        stack.start_web(port)
        stack.start_flower(flower_port, flower_auth, log=logs / "flower.log")
        stack.wait_ready(port)
        print(f"\nLAD Billing is up\n  API:    http://localhost:{port}/api/billing  (OpenAPI: http://localhost:{port}/openapi.json)"
              f"\n  Flower: http://localhost:{flower_port}  (basic auth {flower_auth})", flush=True)
        if generated_secret:
            secret = stack.env["JWT_SECRET"]
            print(f"\nDevelopment JWT_SECRET (generated, kept in .data/jwt_secret): {secret}")
            print(f"Demo tokens for tenant '{DEMO_TENANT}' (also in .data/demo-tokens.env; `source` it):")
            lines = [f"export {name}={token}" for name, token in demo_tokens(secret).items()]
            (DATA_DIR / "demo-tokens.env").write_text("\n".join(lines) + "\n")
            print("\n".join(lines), flush=True)
        print("\nCtrl-C stops everything.", flush=True)
        while not stopping:
            exited = stack.first_exited()
            if exited:
                print(f"{exited[0]} exited with {exited[1]}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping...", flush=True)
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
