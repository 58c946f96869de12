"""The whole service as child processes: servers (embedded or given), migrations, web, worker,
beat and Flower. Used by `make run` and by the test suite, so both run the same stack."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import make_url

from devstack.servers import EmbeddedServers, _wait_for_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON_BIN = Path(sys.executable).parent


def connect(url: str, database: str | None = None):
    """A psycopg2 connection to the database `url` names (or `database` on its server); a URL naming several
    hosts connects as libpq does (the first that target_session_attrs accepts)."""
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

    u = make_url(url)
    args, kwargs = PGDialect_psycopg2().create_connect_args(u.set(database=database) if database else u)
    return psycopg2.connect(*args, **kwargs)



def database_url(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def create_database(url: str, database: str, *, exist_ok: bool) -> None:
    """Create `database` on the server of `url` unless it exists. A role that may not create it gets an
    error naming the database, not a stack trace."""
    try:
        connect(url, database).close()
        if not exist_ok:
            raise RuntimeError(f"database {database} already exists")
        return
    except psycopg2.OperationalError as exc:
        if f'database "{database}" does not exist' not in str(exc):
            raise
    u = make_url(url)
    try:
        connection = connect(url, "postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        connection.close()
    except (psycopg2.errors.InsufficientPrivilege, psycopg2.OperationalError) as exc:
        raise DatabaseMissing(
            f"database {database!r} does not exist on {u.host}:{u.port or 5432} and role {u.username!r} "
            f"could not create it ({str(exc).strip()}); create it (CREATE DATABASE \"{database}\") or "
            "let the role create databases (ALTER ROLE ... CREATEDB)") from None


class DatabaseMissing(RuntimeError):
    """The database DATABASE_URL names is not there and cannot be created."""


def drop_database(url: str, database: str) -> None:
    connection = connect(url, "postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
    connection.close()


def development_secret(data_dir: Path, name: str, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> str:
    """A secret generated once and kept under .data/, so tokens survive restarts."""
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def web_command_args(workers: int, port: int, app_factory: str | None = None) -> list[str]:
    """gunicorn's arguments for the API, the same in `make run`, the tests, the Dockerfile and compose
    (the bench alone names another app factory)."""
    application = f"web.serving:asgi_app({app_factory!r})" if app_factory else "web.serving:asgi_app()"
    return ["--worker-class", "web.serving.Worker", "--workers", str(workers), "--bind", f"0.0.0.0:{port}",
            # idle keep-alive connections stay open longer than a client's pause between requests, so
            # a reused connection is not closed under a request in flight
            "--timeout", "60", "--keep-alive", "75", "--graceful-timeout", "10", application]


@dataclass
class Stack:
    data_dir: Path
    database_name: str
    persistent: bool = True
    env: dict[str, str] = field(default_factory=dict)
    servers: EmbeddedServers | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    server_url: str = ""  # the PostgreSQL server (maintenance database) the service database lives on

    def start_servers(self) -> None:
        """Embedded PostgreSQL/Redis for whichever of DATABASE_URL/REDIS_URL is not set."""
        given_db, given_redis = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
        if not (given_db and given_redis):
            self.servers = EmbeddedServers(self.data_dir, persistent_redis=self.persistent)
            self.servers.root.mkdir(parents=True, exist_ok=True)
            if not given_db:
                self.servers.start_postgres()
            if not given_redis:
                self.servers.start_redis()
        from billing_core.bootstrap import normalize_database_url

        self.server_url = normalize_database_url(given_db) if given_db else self.servers.database_url
        redis_url = given_redis or self.servers.redis_url
        # every web and worker process of this stack writes its metrics here; GET /metrics adds them up
        metrics_dir = self.data_dir / "metrics" / self.database_name
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        self.env.update(
            DATABASE_URL=database_url(self.server_url, self.database_name),
            REDIS_URL=redis_url,
            PYTHONUNBUFFERED="1",
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        )
        create_database(self.server_url, self.database_name, exist_ok=self.persistent)

    def child_env(self) -> dict[str, str]:
        return {**os.environ, **self.env, "PATH": f"{PYTHON_BIN}:{os.environ.get('PATH', '')}"}

    def run_once(self, *args: str) -> None:
        subprocess.run(args, cwd=ROOT, env=self.child_env(), check=True)

    def migrate(self) -> None:
        self.run_once(str(PYTHON_BIN / "alembic"), "upgrade", "head")
        self.run_once(str(PYTHON_BIN / "flask"), "--app", "web.app:create_app", "billing", "load-catalog")

    def spawn(self, name: str, *args: str, log: Path | None = None) -> subprocess.Popen:
        output = log.open("ab") if log else None
        process = subprocess.Popen(args, cwd=ROOT, env=self.child_env(), start_new_session=True,
                                   stdout=output, stderr=subprocess.STDOUT if output else None)
        self.processes[name] = process
        return process

    # --- the service's processes: one command line each, for the test stack and for `make run` ---

    def web_command(self, port: int, workers: int = 2, threads: int = 32, app_factory: str | None = None) -> list[str]:
        # web.serving: uvicorn workers read whole requests on an event loop before a thread sees them,
        # so slow clients cannot tie up the threads (see web/serving.py)
        self.env["WEB_THREADS"] = str(threads)
        return [str(PYTHON_BIN / "gunicorn"), *web_command_args(workers, port, app_factory)]

    def worker_command(self, concurrency: int = 4, name: str = "worker", include: str | None = None) -> list[str]:
        return [str(PYTHON_BIN / "celery"), "-A", "tasks.app", "worker", "--loglevel", "INFO",
                "--concurrency", str(concurrency), "--hostname", f"{name}-{self.database_name}@%h",
                *(["--include", include] if include else [])]

    def beat_command(self) -> list[str]:
        return [str(PYTHON_BIN / "celery"), "-A", "tasks.app", "beat", "--loglevel", "INFO",
                "--schedule", str(self.data_dir / f"celerybeat-schedule-{self.database_name}")]

    def flower_command(self, port: int) -> list[str]:
        # loopback only: Flower shows every task's arguments; its basic auth comes from FLOWER_BASIC_AUTH
        # in the environment, so the password is not on a command line for `ps` to show
        return [str(PYTHON_BIN / "celery"), "-A", "tasks.app", "flower", f"--port={port}", "--address=127.0.0.1",
                "--persistent=True", f"--db={self.data_dir / 'flower.db'}"]

    def start_web(self, port: int, log: Path | None = None, workers: int = 2, threads: int = 32,
                  app_factory: str | None = None) -> None:
        process = self.spawn("web", *self.web_command(port, workers, threads, app_factory), log=log)
        _wait_for_port(port, process, log or Path("/dev/null"), timeout=60)

    def start_worker(self, log: Path | None = None, concurrency: int = 4, name: str = "worker",
                     include: str | None = None) -> subprocess.Popen:
        return self.spawn(name, *self.worker_command(concurrency, name, include), log=log)

    def start_beat(self, log: Path | None = None) -> None:
        self.spawn("beat", *self.beat_command(), log=log)

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        for name in list(self.processes):
            self.stop_process(name)
        if self.servers is not None:
            self.servers.stop()

    def wait_ready(self, port: int, timeout: float = 60) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("service did not become ready")
            time.sleep(0.2)
