"""docker-compose.yml describes a stack whose every command names something that exists here.
(No Docker engine runs on this machine, so the file is checked, not run.)"""
from __future__ import annotations

import importlib
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
services = compose["services"]
APP_SERVICES = {"migrate", "web", "worker", "beat", "flower"}


def argv(service: dict) -> list[str]:
    command = service["command"]
    if isinstance(command, str):
        command = shlex.split(command)
    if command[:2] == ["sh", "-c"]:
        return [word for part in command[2].split("&&") for word in shlex.split(part)]
    return command


def test_the_stack_has_every_service_with_healthchecks():
    assert APP_SERVICES | {"postgres", "redis"} <= set(services)
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
    assert services["migrate"]["restart"] == "no"
    assert [n for n in APP_SERVICES if "beat" in argv(services[n])] == ["beat"]  # exactly one beat


def test_app_services_wait_for_healthy_servers_and_migrations():
    for name in APP_SERVICES - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_every_command_refers_to_something_that_exists():
    for name in APP_SERVICES:
        words = argv(services[name])
        for program in {"gunicorn", "celery", "alembic", "flask"} & set(words):
            assert (Path(sys.executable).parent / program).exists(), program
        if "celery" in words:
            app_module = words[words.index("-A") + 1]
            assert hasattr(importlib.import_module(app_module), "celery_app")
        if "gunicorn" in words:
            module, _, factory = words[-1].partition(":")
            assert callable(getattr(importlib.import_module(module), factory.removesuffix("()")))
        if "--app" in words:
            module, _, factory = words[words.index("--app") + 1].partition(":")
            app = getattr(importlib.import_module(module), factory)()
            assert "billing" in app.cli.commands and "load-catalog" in app.cli.commands["billing"].commands
        if "alembic" in words:
            assert (ROOT / "alembic.ini").exists() and (ROOT / "migrations" / "env.py").exists()
    assert (ROOT / "Dockerfile").exists()
