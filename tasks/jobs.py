"""Running a scheduled job on demand, exactly as beat would have it run (same task, same arguments),
but in this process: `make job NAME=...` and `flask --app web.app:create_app billing job NAME`."""
from __future__ import annotations

from typing import Any

from tasks.app import celery_app


def job_names() -> list[str]:
    return sorted(celery_app.conf.beat_schedule)


def run_job(name: str) -> Any:
    """Run the beat entry `name` now and return the task's result; KeyError for an unknown name."""
    entry = celery_app.conf.beat_schedule[name]
    celery_app.loader.import_default_modules()  # the task modules a worker would import
    task = celery_app.tasks[entry["task"]]
    return task.apply(args=entry.get("args", ()), kwargs=entry.get("kwargs", {})).get()
