"""Alembic environment: the database URL comes from DATABASE_URL (or the caller's config)."""
from alembic import context
from sqlalchemy import create_engine

from billing_core.bootstrap import settings as service_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or service_settings().database_url

if context.is_offline_mode():
    context.configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    # no SQL parameters in errors or logs; the application name tells the migrations' statements apart in
    # the server's log (the tests' statement check leaves them out)
    engine = create_engine(url, hide_parameters=True, connect_args={"application_name": "lad-migrations"})
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
