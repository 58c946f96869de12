"""The Celery application. Workers and beat start with `celery -A tasks.app ...`."""
from celery import Celery
from celery.signals import worker_process_init

from billing_core.db import dispose_engines

celery_app = Celery("lad_billing", include=["tasks.charging", "tasks.credits"])
celery_app.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    dispose_engines()
