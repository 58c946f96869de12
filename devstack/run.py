"""`make run`: the whole service in the foreground until SIGINT or SIGTERM."""
from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from billing_core.bootstrap import normalize_database_url
from devstack import supervise
from devstack.servers import _wait_for_port
from devstack.stack import PYTHON_BIN, ROOT, DatabaseMissing, Stack, development_secret

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


def service_database() -> str:
    """The database DATABASE_URL names (lad_billing when it names none, or when it is unset: then the
    embedded server's)."""
    from sqlalchemy.engine import make_url

    given = os.environ.get("DATABASE_URL")
    return (make_url(normalize_database_url(given)).database if given else None) or "lad_billing"


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(data_dir: Path = DATA_DIR, stack_env: Callable[[], dict[str, str]] | None = None,
         when_up: Callable[[], None] | None = None) -> int:
    """`make run`; `make ha` (devstack.ha) runs the same with its servers given in DATABASE_URL/REDIS_URL,
    its own data folder, more lines for stack.env and more to print once the service is up."""
    port = int(os.environ.get("PORT", "3004"))
    flower_port = int(os.environ.get("FLOWER_PORT", "5555"))
    production = os.environ.get("LAD_ENV", "development") == "production"
    if production and not (os.environ.get("JWT_SECRET") or os.environ.get("JWT_PUBLIC_KEY")):
        print("LAD_ENV=production needs JWT_SECRET or JWT_PUBLIC_KEY", file=sys.stderr)
        return 2
    if production and not os.environ.get("FLOWER_BASIC_AUTH"):
        print("LAD_ENV=production needs FLOWER_BASIC_AUTH", file=sys.stderr)
        return 2
    if production and not os.environ.get("LAD_PUBLIC_URL"):
        print("LAD_ENV=production needs LAD_PUBLIC_URL (the address links and redirects name)", file=sys.stderr)
        return 2

    stack = Stack(data_dir, database_name=service_database())
    # links and redirects name this address, never a request's Host (web.app.public_url_from_env)
    stack.env["LAD_PUBLIC_URL"] = os.environ.get("LAD_PUBLIC_URL") or f"http://localhost:{port}"
    generated_secret = not (os.environ.get("JWT_SECRET") or os.environ.get("JWT_PUBLIC_KEY"))
    if generated_secret:
        stack.env["JWT_SECRET"] = development_secret(data_dir, "jwt_secret")
    generated_flower_auth = not os.environ.get("FLOWER_BASIC_AUTH")
    stack.env["FLOWER_BASIC_AUTH"] = os.environ.get("FLOWER_BASIC_AUTH") or development_secret(
        data_dir, "flower_basic_auth", lambda: f"admin:{secrets.token_urlsafe(12)}")

    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    state, logs = data_dir / "supervisor", data_dir / "logs"
    state.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    try:
        try:
            stack.start_servers()
        except DatabaseMissing as exc:
            print(f"DATABASE_URL: {exc}", file=sys.stderr)
            return 2
        # where `make job` finds these servers (and `make console` the address its links name)
        env_lines = {key: stack.env[key] for key in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR",
                                                 "LAD_PUBLIC_URL")}
        env_lines.update(stack_env() if stack_env else {})
        (data_dir / "stack.env").write_text("".join(f"{key}={value}\n" for key, value in env_lines.items()))
        stack.migrate()
        # supervisord owns web, worker, beat and Flower: it restarts whichever exits (devstack.supervise)
        (state / "supervisord.conf").write_text(supervise.config({
            "web": stack.web_command(port),
            "worker": stack.worker_command(concurrency=4),
            "beat": stack.beat_command(),
            "flower": stack.flower_command(flower_port),
        }, state, logs={"flower": logs / "flower.log"}))  # Flower's warnings about idle workers are noise here
        supervisord = stack.spawn("supervisord", str(PYTHON_BIN / "supervisord"), "-c", str(state / "supervisord.conf"))
        stack.wait_ready(port)
        _wait_for_port(flower_port, supervisord, Path("/dev/null"), timeout=60)
        # only credentials generated here are printed; configured ones are the operator's to know
        flower_auth = "basic auth from FLOWER_BASIC_AUTH" if not generated_flower_auth else \
            f"generated, in {_shown(data_dir / 'flower_basic_auth')}: basic auth {stack.env['FLOWER_BASIC_AUTH']}"
        print(f"\nLAD Billing is up\n  API:    http://localhost:{port}/api/billing  (OpenAPI: http://localhost:{port}/openapi.json)"
              f"\n  Flower: http://127.0.0.1:{flower_port}  ({flower_auth})", flush=True)
        if generated_secret:
            secret = stack.env["JWT_SECRET"]
            print(f"\nDevelopment JWT_SECRET (generated, kept in {_shown(data_dir / 'jwt_secret')}): {secret}")
            print(f"Demo tokens for tenant '{DEMO_TENANT}' (also in {_shown(data_dir / 'demo-tokens.env')}; `source` it):")
            lines = [f"export {name}={token}" for name, token in demo_tokens(secret).items()]
            (data_dir / "demo-tokens.env").write_text("\n".join(lines) + "\n")
            print("\n".join(lines), flush=True)
        if when_up:
            when_up()
        print("\nA process that exits is restarted. Ctrl-C stops everything.", flush=True)
        while not stopping:
            if supervisord.poll() is not None:
                print(f"supervisord exited with {supervisord.returncode}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping...", flush=True)
        # supervisord stops its programs (SIGTERM to each process group) before it exits
        stack.stop_process("supervisord", timeout=supervise.STOP_WAIT_SECS + 15)
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
