"""Settings read from the environment once per process."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    broker_url: str
    queue: str
    # a charge still pending this long after its last enqueue is enqueued again
    pending_charge_age_seconds: int
    pending_sweep_interval_seconds: int
    # "group": a wallet's pending charges are settled in groups, one transaction each (default);
    # "naive": one message and one transaction per charge, kept only so `make bench` can compare
    charge_mode: str
    charge_batch_size: int
    quote_ttl_seconds: int = 900
    stripe_webhook_secret: str | None = None
    # rate limits (`limits` notation) per tenant and per token, by capability; a tenant whose
    # available balance is at or below zero gets the depleted limit on reservations (never on charges)
    # charge events, not requests: a POST /charges batch counts as its events (1,000 a second per tenant)
    rate_limit_charge: str = "60000/minute"
    rate_limit_view: str = "3000/minute"
    rate_limit_admin: str = "1200/minute"
    rate_limit_depleted: str = "60/minute"
    # requests refused with 401/403 count here only: per token, and per source address (which may be a
    # proxy or a NAT in front of many clients, hence larger); both below the ordinary rates
    rate_limit_refused: str = "60/minute"
    rate_limit_refused_address: str = "600/minute"
    # auto top-up: payments through Stripe (unset key: auto top-up answers 503 and never pays)
    stripe_secret_key: str | None = None
    stripe_api_base: str = "https://api.stripe.com"
    # a try that could not reach Stripe is repeated after base × 2^(tries−1) seconds, this many tries in all
    auto_topup_retry_base_seconds: int = 5
    auto_topup_max_tries: int = 8
    # a streaming replica for the heavy reads (billing_core.db.read_engine); None: the primary serves them
    read_database_url: str | None = None

    def __post_init__(self) -> None:
        if self.charge_mode not in ("group", "naive"):
            raise ValueError(f"CHARGE_MODE must be group or naive, not {self.charge_mode!r}")
        if self.charge_batch_size < 1:
            raise ValueError("CHARGE_BATCH_SIZE must be at least 1")

    @property
    def charge_outcome_channel(self) -> str:
        return f"{self.queue}:charge-outcomes"

    @classmethod
    def from_env(cls) -> Settings:
        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        return cls(
            database_url=normalize_database_url(
                os.environ.get("DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/lad_billing")
            ),
            redis_url=redis_url,
            broker_url=os.environ.get("CELERY_BROKER_URL") or redis_url,
            queue=os.environ.get("BILLING_QUEUE", "billing"),
            pending_charge_age_seconds=int(os.environ.get("PENDING_CHARGE_AGE_SECONDS", "60")),
            pending_sweep_interval_seconds=int(os.environ.get("PENDING_SWEEP_INTERVAL_SECONDS", "60")),
            charge_mode=os.environ.get("CHARGE_MODE", "group"),
            charge_batch_size=int(os.environ.get("CHARGE_BATCH_SIZE", "500")),
            quote_ttl_seconds=int(os.environ.get("QUOTE_TTL_SECONDS", "900")),
            stripe_webhook_secret=os.environ.get("STRIPE_WEBHOOK_SECRET") or None,
            rate_limit_charge=os.environ.get("RATE_LIMIT_CHARGE", "60000/minute"),
            rate_limit_view=os.environ.get("RATE_LIMIT_VIEW", "3000/minute"),
            rate_limit_admin=os.environ.get("RATE_LIMIT_ADMIN", "1200/minute"),
            rate_limit_depleted=os.environ.get("RATE_LIMIT_DEPLETED", "60/minute"),
            rate_limit_refused=os.environ.get("RATE_LIMIT_REFUSED", "60/minute"),
            rate_limit_refused_address=os.environ.get("RATE_LIMIT_REFUSED_ADDRESS", "600/minute"),
            stripe_secret_key=os.environ.get("STRIPE_SECRET_KEY") or None,
            stripe_api_base=os.environ.get("STRIPE_API_BASE") or "https://api.stripe.com",
            auto_topup_retry_base_seconds=int(os.environ.get("AUTO_TOPUP_RETRY_BASE_SECONDS", "5")),
            auto_topup_max_tries=int(os.environ.get("AUTO_TOPUP_MAX_TRIES", "8")),
            read_database_url=normalize_database_url(os.environ["READ_DATABASE_URL"])
            if os.environ.get("READ_DATABASE_URL") else None,
        )


def normalize_database_url(url: str) -> str:
    """Accept the common `postgres://` and `postgresql://` forms and pin the psycopg2 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url
