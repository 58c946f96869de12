"""`flask --app web.app:create_app billing ...`: administration commands."""
from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from billing_core import pricing
from billing_core.db import UnitOfWork, engine_for

billing_cli = AppGroup("billing", help="LAD Billing administration.")


@billing_cli.command("load-catalog")
def load_catalog() -> None:
    """Load the default global price catalog (repeatable)."""
    with UnitOfWork(engine_for(current_app.config["LAD_SETTINGS"].database_url)) as uow:
        pricing.load_default_catalog(uow)
        uow.commit()
    click.echo("default price catalog loaded")
