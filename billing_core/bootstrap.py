"""The one wiring point. Every environment variable the service reads is a field of `Settings`, read once
per process by `settings()`; `Runtime` builds the clients from it (database engines, Redis) and hands out
units of work. The web app (`web.app.create_app`), the Celery app (`tasks.app`), `make run`, the bench and the
tests all start here: nothing else reads `os.environ` or builds a client at import, so a test or a second app
with other settings gets its own runtime instead of one fixed when a module was first imported."""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

import redis
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import Engine

from billing_core.db import UnitOfWork, engine_for, read_engine
from billing_core.redis_clients import redis_from_url

DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/lad_billing"


class Settings(BaseSettings):
    """The service's configuration; docs/configuration.md describes each variable (its name in capitals)."""
    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, extra="ignore", populate_by_name=True)

    # --- servers -------------------------------------------------------------------------------------
    database_url: str = DEFAULT_DATABASE_URL
    # a streaming replica for the heavy reads (billing_core.db.read_engine); None: the primary serves them
    read_database_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str | None = None  # default: redis_url
    queue: str = Field("billing", validation_alias="BILLING_QUEUE")

    # --- charging --------------------------------------------------------------------------------------
    # a charge still pending this long after its last enqueue is enqueued again
    pending_charge_age_seconds: int = 60
    pending_sweep_interval_seconds: int = 60
    charge_batch_size: int = Field(500, ge=1)
    quote_ttl_seconds: int = 900
    # a charge's occurredAt may be this many days old at most (late usage; issue 20)
    late_usage_max_days: int = Field(35, ge=1)

    # --- rate limits (`limits` notation) per tenant and per token, by capability ---------------------------
    # charge events, not requests: a POST /charges batch counts as its events (1,000 a second per tenant);
    # a tenant whose available balance is at or below zero gets the depleted limit on holds (never on charges)
    rate_limit_charge: str = "60000/minute"
    rate_limit_view: str = "3000/minute"
    rate_limit_admin: str = "1200/minute"
    rate_limit_depleted: str = "60/minute"
    # requests refused with 401/403 count here only: per token, and per source address (which may be a
    # proxy or a NAT in front of many clients, hence larger); both below the ordinary rates
    rate_limit_refused: str = "60/minute"
    rate_limit_refused_address: str = "600/minute"

    # --- Stripe ----------------------------------------------------------------------------------------
    stripe_webhook_secret: str | None = None
    # auto top-up pays through Stripe (unset key: auto top-up answers 503 and never pays)
    stripe_secret_key: str | None = None
    stripe_api_base: str = "https://api.stripe.com"
    # a try that could not reach Stripe is repeated after base × 2^(tries−1) seconds, this many tries in all
    auto_topup_retry_base_seconds: int = 5
    auto_topup_max_tries: int = 8

    # --- sharding (make citus-distribute, billing_core/sharding.py) -----------------------------------
    # the coordinator's address as the Citus workers reach it (default: DATABASE_URL's host)
    citus_coordinator_host: str | None = None

    # --- exports -------------------------------------------------------------------------------------
    # where Parquet exports go: a directory (relative to the working directory) or any fsspec URL
    export_url: str = ".data/exports"

    # --- notifications (seconds, decimals allowed) -------------------------------------------------------
    notification_retry_base_seconds: Decimal = Field(Decimal(30), ge=0)
    notification_retry_max_delay_seconds: Decimal = Field(Decimal(3600), ge=0)
    notification_retry_horizon_seconds: Decimal = Field(Decimal(86400), ge=0)
    notification_sweep_grace_seconds: Decimal = Field(Decimal(60), ge=0)
    notification_http_timeout_seconds: int = 10
    smtp_url: str | None = None  # smtp://[user:pass@]host[:port][?starttls=true] or smtps://
    smtp_from: str = "LAD Billing <billing@localhost>"
    operator_webhook_url: str | None = None
    operator_webhook_secret: str | None = None
    operator_email: str | None = None
    # the SSRF guard: webhooks may not reach private addresses unless this is set (`make run` sets it)
    webhook_allow_private_addresses: bool = False

    # --- the web processes -------------------------------------------------------------------------------
    lad_env: Literal["development", "production", "test"] = "development"
    # the service's own address for links and redirects, never a request's Host header
    lad_public_url: str | None = None
    port: int = 3004
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_max_lifetime_seconds: int = Field(30 * 24 * 3600, ge=1)
    metrics_token: str | None = None
    prometheus_multiproc_dir: str | None = None
    portal_frame_ancestors: str = ""
    web_threads: int = 32
    web_max_buffered_bytes: int = 64 * 1024 * 1024
    web_body_timeout_seconds: int = 30
    web_header_timeout_seconds: int = 30
    log_level: str = "INFO"

    @field_validator("database_url", "read_database_url")
    @classmethod
    def _psycopg2(cls, url: str | None) -> str | None:
        return normalize_database_url(url) if url else url

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def charge_outcome_channel(self) -> str:
        return f"{self.queue}:charge-outcomes"

    @property
    def production(self) -> bool:
        return self.lad_env == "production"



def normalize_database_url(url: str) -> str:
    """Accept the common `postgres://` and `postgresql://` forms and pin the psycopg2 driver. Several hosts
    in libpq's form (`u@h1:p1,h2:p2/db?target_session_attrs=read-write`) become SQLAlchemy's
    (`u@/db?host=h1:p1&host=h2:p2&...`), which it hands to libpq as they were: libpq tries the hosts in
    order and keeps the first that `target_session_attrs` accepts (the primary, after a failover too)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg2://" + url[len(prefix):]
            break
    return _hosts_in_query(url)


def _hosts_in_query(url: str) -> str:
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if "," not in hosts:
        return url
    path, _, query = tail.partition("?")
    host_params = "&".join(f"host={host}" for host in hosts.split(",") if host)
    return f"{scheme}://{userinfo}{at}{path or '/'}?{host_params}{'&' + query if query else ''}"


@dataclass
class Runtime:
    """The clients built from one `Settings`: engines (one per URL, shared with billing_core.db's cache),
    a Redis client, and units of work. Cheap to create; the clients are made on first use."""
    settings: Settings
    _redis: redis.Redis | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def engine(self) -> Engine:
        return engine_for(self.settings.database_url)

    @property
    def read_engine(self) -> Engine:
        return read_engine(self.settings)

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self.engine)

    def read_unit_of_work(self) -> UnitOfWork:
        """For the heavy reads only: served by the replica when there is one."""
        return UnitOfWork(self.read_engine)

    @property
    def redis(self) -> redis.Redis:
        with self._lock:
            if self._redis is None:
                self._redis = redis_from_url(self.settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
            return self._redis


@functools.cache
def settings() -> Settings:
    """This process's settings, read from the environment the first time they are asked for."""
    return Settings()


@functools.cache
def runtime() -> Runtime:
    """This process's runtime (the web app builds its own from its config; see web.runtime)."""
    return Runtime(settings())



def unit_of_work() -> UnitOfWork:
    """A unit of work on this process's primary database: the one way tasks and scripts get one."""
    return runtime().unit_of_work()
