"""The web app's view of the wiring point: the `Runtime` that `create_app` built from its settings
(billing_core.bootstrap), reached from a request through the current app."""
from __future__ import annotations

import uuid
from collections.abc import Iterable

from flask import current_app

from billing_core.bootstrap import Runtime, Settings
from billing_core.db import UnitOfWork


def runtime() -> Runtime:
    return current_app.extensions["lad_runtime"]


def settings() -> Settings:
    return runtime().settings


def unit_of_work() -> UnitOfWork:
    return runtime().unit_of_work()


def read_unit_of_work() -> UnitOfWork:
    """For the heavy reads only (billing_core.db.read_engine): served by the replica when there is one."""
    return runtime().read_unit_of_work()


def request_charging(tenant_id: str, events: Iterable[tuple[uuid.UUID, uuid.UUID]]) -> None:
    """Ask the workers to charge newly accepted events (tasks.usage.request_charging, unless the app was
    made with another way, as the bench's naive mode is)."""
    current_app.extensions["lad_request_charging"](tenant_id, events)
