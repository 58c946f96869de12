"""The Celery application. Workers and beat start with `celery -A tasks.app ...`."""
from typing import Any

from celery import Celery
from celery.signals import before_task_publish, setup_logging, task_postrun, task_prerun, worker_process_init

from billing_core import logs
from billing_core.bootstrap import runtime
from billing_core.db import dispose_engines
from tasks.config import celery_config

celery_app = Celery("lad_billing", include=["tasks.usage", "tasks.ledger", "tasks.payments", "tasks.invoicing",
                                          "tasks.notifications", "tasks.exports", "tasks.corrections"])


@celery_app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    """Configured from the process's settings when first needed, not when this module is imported."""
    sender.conf.update(celery_config(runtime().settings))


REQUEST_ID_HEADER = "lad_request_id"


@setup_logging.connect
def _json_logs(**_: Any) -> None:
    logs.configure(runtime().settings.log_level)  # connecting here keeps Celery from installing its own handlers


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    dispose_engines()


@before_task_publish.connect
def _carry_the_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """The request (or task) that enqueues a task travels with it, so its log lines share one id."""
    request_id = logs.bound().get("request_id")
    if headers is not None and request_id:
        headers[REQUEST_ID_HEADER] = request_id


@task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    logs.clear()
    request_id = getattr(task.request, REQUEST_ID_HEADER, None) if task is not None else None
    logs.bind(task_id=task_id, task=getattr(task, "name", None), **({"request_id": request_id} if request_id else {}))


@task_postrun.connect
def _unbind_task(**_: Any) -> None:
    logs.clear()
