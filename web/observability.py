"""Request ids, structured request logs and Prometheus metrics for the web processes; GET /metrics."""
from __future__ import annotations

import hmac
import ipaddress
import re
import time
import uuid

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from billing_core import logs, metrics
from billing_core.reports import operators
from web.errors import ApiError
from web.runtime import runtime, settings

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# any other method is labelled "other": a label per method a client invents would grow /metrics without bound
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ops = Blueprint("ops", __name__)
log = logs.get(__name__)


def init_observability(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(lambda _exc: logs.clear())
    app.register_blueprint(ops)


def _start() -> None:
    """A request id for every request: the caller's X-Request-Id if it is sane, else a new one."""
    given = request.headers.get("X-Request-Id", "")
    g.request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    g.started = time.perf_counter()
    logs.clear()
    logs.bind(request_id=g.request_id)


def _finish(response: Response) -> Response:
    # the route template, never the raw path: ids in paths would be a label each
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method = request.method if request.method in STANDARD_METHODS else "other"
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    metrics.HTTP_REQUESTS.labels(endpoint, method, str(response.status_code)).inc()
    metrics.HTTP_LATENCY.labels(endpoint, method).observe(elapsed)
    response.headers["X-Request-Id"] = g.get("request_id", "")
    if endpoint != "/metrics":
        log.info("request", method=request.method, path=request.path, status=response.status_code,
                 duration_ms=round(elapsed * 1000, 2))
    return response


class PendingBacklog:
    """Pending usage events and the age of the oldest, read from PostgreSQL at scrape time: the
    backlog is a fact of the database, not of any one process."""

    def collect(self):  # noqa: ANN201 - a prometheus collector
        count = GaugeMetricFamily("lad_pending_charges", "Usage events waiting to be charged")
        age = GaugeMetricFamily("lad_pending_charge_age_seconds", "Age of the oldest pending usage event")
        with runtime().engine.connect() as connection:
            pending, oldest = operators.pending_totals(connection)
        count.add_metric([], pending)
        age.add_metric([], float(oldest))  # seconds, not money: Prometheus takes floats
        yield count
        yield age


class CallSlots:
    """Active calls of each tenant whose plan limits them, and how many tenants are at their limit,
    read from PostgreSQL at scrape time (label per limited tenant only: tenants without a plan add none)."""

    def collect(self):  # noqa: ANN201 - a prometheus collector
        active = GaugeMetricFamily("lad_active_calls", "Active calls (holds) of tenants with a concurrency limit",
                                   labels=["tenant"])
        limit = GaugeMetricFamily("lad_call_limit", "Concurrency limit (burst slots included) of limited tenants",
                                  labels=["tenant"])
        at_limit = GaugeMetricFamily("lad_tenants_at_call_limit", "Tenants whose every call slot is taken")
        with runtime().engine.connect() as connection:
            slots = operators.call_slots(connection)
        for s in slots:
            active.add_metric([s.tenant_id], s.active)
            limit.add_metric([s.tenant_id], s.ceiling)
        at_limit.add_metric([], sum(s.active >= s.ceiling for s in slots))
        yield active
        yield limit
        yield at_limit


class _ThisProcess:
    def collect(self):  # noqa: ANN201 - a prometheus collector
        yield from REGISTRY.collect()


def _may_scrape() -> bool:
    """/metrics shows business volumes: only a scraper holding METRICS_TOKEN (bearer), or one on
    the loopback address."""
    expected = settings().metrics_token
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if expected and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode()):
        return True
    try:
        peer = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return (getattr(peer, "ipv4_mapped", None) or peer).is_loopback


@ops.get("/metrics")
def get_metrics() -> Response:
    """Prometheus text format, summed over every web and worker process sharing PROMETHEUS_MULTIPROC_DIR."""
    if not _may_scrape():
        raise ApiError("unauthorized", "/metrics needs the METRICS_TOKEN bearer token or a loopback address")
    registry = CollectorRegistry()
    if settings().prometheus_multiproc_dir:
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(PendingBacklog())
    registry.register(CallSlots())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
