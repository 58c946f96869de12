"""`make run`'s process supervision, by supervisord (the `supervisor` package).

supervisord starts web, worker, beat and Flower, restarts any of them that exits (a child that dies
within STARTSECS of its start is retried after 1 s, 2 s, 3 s ... — supervisor's own backoff), logs one
warning line per unexpected exit, and stops them all, process group and all, when it is told to stop.
The restarts are counted by an event listener (`python -m devstack.supervise`, the supervisor event
protocol on stdin/stdout) into `lad_process_restarts_total{process}`, which GET /metrics adds up with
the other processes' metrics (PROMETHEUS_MULTIPROC_DIR).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from devstack.stack import ROOT

STARTSECS = 5          # a child must stay up this long to count as started; before that, backoff
START_RETRIES = 1000   # retries with backoff before supervisord gives a child up (FATAL): in effect never
STOP_WAIT_SECS = 20    # SIGTERM, then this long for a graceful stop, then SIGKILL to the process group


def _quote(argv: list[str]) -> str:
    # supervisord expands %(name)s in its values: a literal % is written %%
    return " ".join(shlex.quote(a) for a in argv).replace("%", "%%")


def config(programs: dict[str, list[str]], state_dir: Path, logs: dict[str, Path] | None = None) -> str:
    """supervisord.conf for `programs` (name → argv). Child output goes to the terminal of `make run`
    (supervisord's stdout), or to the file `logs` names for it; supervisord's warnings to the terminal."""
    logs = logs or {}
    lines = [
        # in the foreground supervisord echoes its log to stdout, so its log file would be a second copy
        "[supervisord]", "nodaemon=true", "logfile=/dev/null", "logfile_maxbytes=0", "loglevel=warn",
        f"pidfile={state_dir / 'supervisord.pid'}", f"directory={ROOT}", f"childlogdir={state_dir}", "",
    ]
    for name, argv in programs.items():
        lines += [
            f"[program:{name}]", f"command={_quote(argv)}", f"directory={ROOT}", "autostart=true",
            "autorestart=true", f"startsecs={STARTSECS}", f"startretries={START_RETRIES}",
            "stopsignal=TERM", f"stopwaitsecs={STOP_WAIT_SECS}", "stopasgroup=true", "killasgroup=true",
            "redirect_stderr=true", f"stdout_logfile={logs.get(name, '/dev/stdout')}".replace("%", "%%"),
            "stdout_logfile_maxbytes=0", "",
        ]
    lines += [
        "[eventlistener:restart-counter]", f"command={_quote([sys.executable, '-m', 'devstack.supervise'])}",
        f"directory={ROOT}", "events=PROCESS_STATE_EXITED,PROCESS_STATE_BACKOFF", "autorestart=true",
        "stderr_logfile=/dev/stderr", "stderr_logfile_maxbytes=0", "",
    ]
    return "\n".join(lines)


def count_restarts() -> None:
    """The event listener: every exit of a running child (EXITED) or of one still starting (BACKOFF)
    is followed by supervisord restarting it; count each."""
    from billing_core.metrics import PROCESS_RESTARTS

    stdin, stdout = sys.stdin, sys.stdout
    while True:
        stdout.write("READY\n")
        stdout.flush()
        header = dict(token.split(":", 1) for token in stdin.readline().split())
        payload = stdin.read(int(header["len"]))
        fields = dict(token.split(":", 1) for token in payload.split("\n", 1)[0].split())
        if fields.get("processname"):
            PROCESS_RESTARTS.labels(fields["processname"]).inc()
        stdout.write("RESULT 2\nOK")
        stdout.flush()


if __name__ == "__main__":
    count_restarts()
