"""`make job NAME=...`: run one scheduled job now, against the servers `make run` started (their
addresses are in .data/stack.env) unless DATABASE_URL and REDIS_URL are set."""
from __future__ import annotations

import json
import os
import sys

from devstack.run import DATA_DIR


def main(argv: list[str]) -> int:
    stack_env = DATA_DIR / "stack.env"
    if not os.environ.get("DATABASE_URL") and stack_env.exists():
        for line in stack_env.read_text().splitlines():
            key, _, value = line.partition("=")
            os.environ.setdefault(key, value)
    from tasks.jobs import job_names, run_job

    if len(argv) != 1 or argv[0] not in job_names():
        print(f"usage: make job NAME=<{'|'.join(job_names())}>", file=sys.stderr)
        return 2
    print(json.dumps(run_job(argv[0]), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
