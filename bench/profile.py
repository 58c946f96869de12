"""`BENCH_PROFILE=1 make bench`: sample the web and worker processes with py-spy while a scenario runs,
and summarize where their time went (bench/PROFILE.md quotes these summaries).

py-spy samples from outside the process (no code change, no instrumentation overhead in the measured
process beyond the sampling itself), every child with --subprocesses: the gunicorn workers under the
master, the Celery pool processes under the worker. Idle threads waiting on a socket or a lock are left
out (--idle is off), so the shares are of busy time. Summaries go to .data/bench/logs/profile-*.txt.
"""
from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

SCAFFOLDING = ("threading", "concurrent/", "gunicorn/", "celery/", "billiard/", "click/", "kombu/", "<frozen")
RATE = 100  # samples per second per process: low enough not to steal a core from what it measures


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy on the named processes of the stack for as long as the block runs."""

    def __init__(self, stack: Any, scenario: str, logs: Path, processes: tuple[str, ...] = ("web", "worker")):
        self.stack, self.scenario, self.logs, self.names = stack, scenario, logs, processes
        self.samplers: dict[str, tuple[subprocess.Popen, Path]] = {}

    def __enter__(self) -> Profiler:
        binary = py_spy()
        if binary is None:
            print("BENCH_PROFILE: py-spy not installed (pip install py-spy)")
            return self
        for name in self.names:
            process = self.stack.processes.get(name)
            if process is None:
                continue
            # "wall": threads not idle (running, or waiting on PostgreSQL/Redis); "gil": the thread holding
            # the GIL, i.e. Python's CPU time, which is what two cores run out of
            for kind, extra in (("wall", []), ("gil", ["--gil"])):
                raw = self.logs / f"profile-{self.scenario}-{name}-{kind}.raw"
                sampler = subprocess.Popen([binary, "record", "--pid", str(process.pid), "--subprocesses", "--rate",
                                            str(RATE), "--format", "raw", "--nonblocking", *extra, "-o", str(raw)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.samplers[f"{name}-{kind}"] = (sampler, raw)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, (sampler, raw) in self.samplers.items():
            sampler.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            try:
                sampler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sampler.kill()
            if raw.exists():
                summary = summarize(raw.read_text())
                (self.logs / f"profile-{self.scenario}-{name}.txt").write_text(summary)
                print(f"--- profile {self.scenario} / {name} ---\n{summary}")


def _frame(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)": lines differ, functions are what we change
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if "site-packages" in parts or "lib" in parts else path
    return f"{name} ({short})"


def summarize(raw: str, top: int = 25) -> str:
    """Self and inclusive shares of the busy samples, by function, and by package (inclusive)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [_frame(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
        for package in {_package(f) for f in stack.split(";")}:
            packages[package] += samples
    if not total:
        return "no samples\n"

    def share(counter: collections.Counter[str], keep: Any = lambda name: True) -> list[str]:
        return [f"{100 * n / total:5.1f}%  {name}" for name, n in counter.most_common()
                if keep(name)][:top]

    def work(name: str) -> bool:
        # inclusive shares of the scaffolding every sample passes through (thread and process start,
        # gunicorn's and Celery's loops) say nothing; what they call does
        return inclusive[name] < 0.85 * total and not any(f"({lib}" in name for lib in SCAFFOLDING)

    return "\n".join([f"{total} busy samples", "", "self:", *share(own), "", "inclusive:", *share(inclusive, work), "",
                      "inclusive by package:", *share(packages)[:15]]) + "\n"


def _package(frame: str) -> str:
    where = frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    parts = Path(where).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if "python3.11" in parts:
        return "stdlib"
    for mine in ("billing_core", "web", "tasks", "devstack", "bench"):
        if mine in parts:
            return mine
    return where or "?"
