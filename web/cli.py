"""`flask --app web.app:create_app billing ...`: administration commands."""
from __future__ import annotations

import click
from flask.cli import AppGroup

from billing_core import catalog
from web.runtime import unit_of_work

billing_cli = AppGroup("billing", help="LAD Billing administration.")


@billing_cli.command("load-catalog")
def load_catalog() -> None:
    """Load the default global price catalog (repeatable)."""
    with unit_of_work() as uow:
        catalog.load_default_catalog(uow)  # commits
    click.echo("default price catalog loaded")


@billing_cli.command("job")
@click.argument("name")
def run_job(name: str) -> None:
    """Run a scheduled job now, as beat would (names: the entries of tasks.config.beat_schedule)."""
    import json

    from tasks.jobs import job_names, run_job

    if name not in job_names():
        raise click.BadParameter(f"one of {', '.join(job_names())}", param_hint="NAME")
    click.echo(json.dumps(run_job(name), default=str))
