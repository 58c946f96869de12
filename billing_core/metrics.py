"""Prometheus metrics. With PROMETHEUS_MULTIPROC_DIR set (make run, the test stack, compose), every web
and worker process writes its samples there and GET /metrics adds them up (prometheus_client's
multiprocess mode); without it, each process keeps its own."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HTTP_REQUESTS = Counter("lad_http_requests_total", "HTTP requests by endpoint, method and status",
                        ["endpoint", "method", "status"])
HTTP_LATENCY = Histogram("lad_http_request_duration_seconds", "HTTP request latency by endpoint and method",
                         ["endpoint", "method"], buckets=LATENCY_BUCKETS)
CHARGES_ACCEPTED = Counter("lad_charges_accepted_total", "Charges accepted as pending usage events")
CHARGES_SETTLED = Counter("lad_charges_settled_total", "Charges settled by workers: charged, or rejected by reason",
                          ["outcome", "reason"])
CHARGE_LATENCY = Histogram("lad_charge_commit_seconds", "Time from a charge's acceptance to its settlement commit",
                           buckets=LATENCY_BUCKETS)
ALERTS_FIRED = Counter("lad_alerts_fired_total", "Low-balance alerts fired", ["event_type"])
NOTIFICATION_DELIVERIES = Counter("lad_notification_deliveries_total", "Notification delivery attempts by result",
                                  ["event_type", "channel", "result"])
WEBHOOK_DELIVERY_FAILURES = Counter("lad_webhook_delivery_failures_total",
                                    "Failed webhook delivery attempts (network errors and error answers)",
                                    ["event_type"])
INVOICE_ROLLUP_SECONDS = Histogram("lad_invoice_rollup_duration_seconds", "Monthly invoice rollup duration",
                                   buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
RECONCILIATION_MISMATCHES = Gauge("lad_reconciliation_mismatches", "Mismatches found by the last reconciliation",
                                  multiprocess_mode="mostrecent")
RECONCILIATION_RUNS = Counter("lad_reconciliation_runs_total", "Reconciliation runs by result", ["result"])
AUTO_TOPUP_ATTEMPTS = Counter("lad_auto_topup_attempts_total",
                              "Auto top-up attempts started and tries by outcome (started, succeeded, failed, "
                              "retry, processing, capped)", ["outcome"])
# `make run`'s supervisor (devstack.supervise): children restarted after they exited unexpectedly
PROCESS_RESTARTS = Counter("lad_process_restarts_total", "Processes of the service restarted after an unexpected exit",
                           ["process"])
