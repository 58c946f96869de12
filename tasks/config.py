"""Celery settings: Redis broker (or CELERY_BROKER_URL), late acks, and the one beat schedule, made from the
service's `Settings` when the Celery app first needs its configuration (tasks.app)."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab

from billing_core.bootstrap import Settings
from billing_core.redis_clients import is_sentinel_url, parse_sentinel_url


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's configuration for these settings (lower-case names, as Celery documents them)."""
    broker_url = settings.broker_url
    _sentinel = parse_sentinel_url(broker_url) if is_sentinel_url(broker_url) else None
    if broker_url.startswith(("redis://", "rediss://")):
        broker_transport = "tasks.broker:Transport"
    elif _sentinel is not None:
        # Redis Sentinel: kombu's sentinel transport (with the same fixes) finds the master through the
        # Sentinels and follows it after a failover
        broker_url = _sentinel.kombu_url()
        broker_transport = "tasks.broker:SentinelTransport"
        # Celery prefers a CELERY_BROKER_URL from the environment over broker_url (the Sentinel form that
        # kombu cannot read): the read and write URLs are taken from the configuration first
        broker_read_url = broker_write_url = broker_url
    broker_connection_retry_on_startup = True
    broker_connection_timeout = 3
    # A broker outage is waited out, however long: the default gives up after 100 attempts and the
    # worker (or beat) would exit. `make run` restarts a child that exits anyway, but none should need it.
    broker_connection_max_retries = None
    broker_channel_error_retry = True
    # On a lost broker connection, tasks already running finish: a charge's transaction commits without
    # the broker, only its late ack is lost and the message comes back later as a no-op. Cancelling
    # them would roll back finished work and leave it to the pending sweep. (Celery 6 changes the
    # default; we say what we want.)
    worker_cancel_long_running_tasks_on_connection_loss = False
    broker_transport_options: dict[str, Any] = {
        # An unacknowledged message returns to the queue after this long; a duplicate delivery is
        # harmless (charging is idempotent per event), a lost one is caught by the pending sweep.
        "visibility_timeout": 300,
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
    }
    if _sentinel is not None:
        broker_transport_options["master_name"] = _sentinel.master
        broker_transport_options["sentinel_kwargs"] = {"socket_connect_timeout": 3, "socket_timeout": 3}
    # Outcomes live in PostgreSQL (the usage event); Celery's result store would be a second truth.
    task_ignore_result = True
    result_backend = None

    task_default_queue = settings.queue
    task_serializer = "json"
    accept_content = ["json"]
    # Ack after the charge committed; a worker that dies mid-task leaves the message to be redelivered.
    task_acks_late = True
    task_reject_on_worker_lost = True
    # A charge is milliseconds of work; one that hangs is killed well inside the visibility timeout,
    # its event stays pending and the sweep retries it.
    task_soft_time_limit = 50
    task_time_limit = 60
    # One message at a time per pool process: with acks_late, a message prefetched by a process busy on a
    # hot wallet's groups (seconds) waits behind them while other processes idle (issue 23's call admission).
    worker_prefetch_multiplier = 1
    worker_send_task_events = True
    task_send_sent_event = True

    timezone = "UTC"
    enable_utc = True

    # The one beat schedule. UTC crontab entries; each expires before its next run so a backlog (beat
    # running while workers were down) does not pile up, and each job is safe to run twice or at once
    # (row locks, SKIP LOCKED, unique rows per period). `make job NAME=<entry>` runs one now.
    _MINUTE = {"expires": 50}
    _sweep = settings.pending_sweep_interval_seconds
    beat_schedule = {
        # charges whose message was lost (broker down at submit, worker killed); sub-minute only in tests
        "sweep-pending-charges": {
            "task": "billing.sweep_pending_charges",
            "schedule": crontab(minute="*") if _sweep >= 60 else timedelta(seconds=_sweep),
            "options": {"expires": min(_sweep, 50)},
        },
        # holds past their TTL and grants past their expiry (charging a wallet also ends its own)
        "expire-credits": {"task": "billing.expire_credits", "schedule": crontab(minute="*"), "options": _MINUTE},
        # Stripe events stored while the broker was down
        "sweep-stripe-events": {"task": "billing.sweep_stripe_events", "schedule": crontab(minute="*"),
                                "options": _MINUTE},
        # low-balance alerts the charging path did not report (it asks after every settled group)
        "scan-balance-alerts": {"task": "billing.scan_balance_alerts", "schedule": crontab(minute="*"),
                                "options": _MINUTE},
        # notifications due for (another) delivery attempt whose message was lost
        "sweep-notifications": {"task": "billing.sweep_notifications", "schedule": crontab(minute="*"),
                                "options": _MINUTE},
        # last month's invoices, a little after midnight on the 1st so transactions begun before it have ended
        "rollup-invoices": {"task": "billing.rollup_invoices", "schedule": crontab(minute="15", hour="0", day_of_month="1"),
                            "options": {"expires": 23 * 3600}},
        # auto top-ups the charging path did not start (it asks after every settled group), and pending
        # attempts whose message was lost
        "scan-auto-topups": {"task": "billing.scan_auto_topups", "schedule": crontab(minute="*"), "options": _MINUTE},
        # recurring allocations, once per (tenant, allocation, month) behind a unique key
        "grant-allocations": {"task": "billing.grant_allocations", "schedule": crontab(minute="5", hour="0", day_of_month="1"),
                              "options": {"expires": 23 * 3600}},
        # yesterday's ledger, usage, grants and documents as Parquet under EXPORT_URL (a re-run replaces them)
        "export-yesterday": {"task": "billing.export_yesterday", "schedule": crontab(minute="40", hour="0"),
                             "options": {"expires": 23 * 3600}},
        # every wallet's ledger chain, balance, grants and holds, and the pending backlog
        "reconcile-ledgers": {"task": "billing.reconcile_ledgers", "schedule": crontab(minute="7"),
                              "options": {"expires": 3000}},
    }

    # every public local above is a Celery setting
    return {name: value for name, value in locals().items() if not name.startswith("_") and name != "settings"}
