"""The statement check's pytest wiring (tests/conftest.py turns it on): mark the suite's own SQL, remember where
the servers' statement logs stood when the session started, check what was appended when it ends.

- Statements sent from code under tests/ (fixtures, assertions, the test clock) get the comment `/* lad-test */`
  (a SQLAlchemy before_cursor_execute hook in this process): the check leaves them out. SQL that billing_core,
  web, tasks or devstack send is checked, whoever called it, and so is everything the web and worker
  processes of the end-to-end stacks send (their statements reach the same server logs).
- The logs: every `.data/*/postgres/log/statements-*.json` (the embedded servers of the levels; the faults
  tests' stacks have their own folders). Lines written before the session started are not read.
- A violation fails the session (exit status 1) and is listed at the end and in .data/citus-check.txt.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from devstack.stack import ROOT
from tests.support.citus_rules import TEST_MARK, LogStatements, Violation, check_log

TESTS = str(ROOT / "tests") + "/"
REPORT = ROOT / ".data" / "citus-check.txt"


def _logs() -> list[Path]:
    return sorted((ROOT / ".data").glob("*/postgres/log/statements-*.json"))


def _from_tests() -> bool:
    """The nearest caller outside SQLAlchemy (and contextlib) is code under tests/."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/sqlalchemy/" not in name and "/contextlib" not in name and not name.endswith("statement_check.py"):
            return name.startswith(TESTS)
        frame = frame.f_back
    return False


def _mark(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool):
    if _from_tests():
        statement = f"{TEST_MARK} {statement}"
    return statement, parameters


class StatementCheck:
    def __init__(self) -> None:
        self.offsets: dict[Path, int] = {}
        self.violations: list[Violation] = []
        self.checked = 0

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # the logs of earlier sessions go (every statement of a run adds up), but the newest of each server,
        # which a server still running may be writing: it is read from where it stands now
        for folder in {path.parent for path in _logs()}:
            old = sorted(folder.glob("statements-*"), key=lambda p: p.stat().st_mtime)
            keep = max((p for p in old if p.suffix == ".json"), key=lambda p: p.stat().st_mtime, default=None)
            for path in old:
                if path != keep:
                    path.unlink(missing_ok=True)
        self.offsets = {path: path.stat().st_size for path in _logs()}

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        log = LogStatements()
        for path in _logs():
            log.read(path, self.offsets.get(path, 0))
        self.checked = len(log.statements)
        if not self.checked:
            return
        self.violations = check_log(log.statements)
        REPORT.parent.mkdir(parents=True, exist_ok=True)
        REPORT.write_text("".join(f"{v}\n" for v in self.violations))
        if self.violations and session.exitstatus == 0:
            session.exitstatus = 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.checked:
            if os.environ.get("DATABASE_URL"):
                terminalreporter.write_line("Citus statement check: nothing read (DATABASE_URL names an external "
                                            "server, whose statement log the tests do not read)")
            return
        terminalreporter.section("Citus statement check (tests/support/citus_rules.py)")
        for violation in self.violations:
            terminalreporter.write_line(str(violation))
        terminalreporter.write_line(f"{self.checked} distinct statements checked, {len(self.violations)} violations"
                                    + (f" (also in {REPORT})" if self.violations else ""))


def start(config: pytest.Config) -> None:
    if not event.contains(Engine, "before_cursor_execute", _mark):
        event.listen(Engine, "before_cursor_execute", _mark, retval=True)
    config.pluginmanager.register(StatementCheck(), "citus-statement-check")
