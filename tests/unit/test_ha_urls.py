"""The high-availability forms of the service's URLs (docs/high-availability.md): a DATABASE_URL naming
several hosts, and Sentinel URLs for Redis and the Celery broker."""
from __future__ import annotations

import pytest
from redis.sentinel import SentinelConnectionPool
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.engine import make_url

from billing_core.bootstrap import Settings, normalize_database_url
from billing_core.db import CONNECT_TIMEOUT_PER_HOST_SECONDS, CONNECT_TIMEOUT_SECONDS, _connect_timeout
from billing_core.redis_clients import parse_sentinel_url, redis_from_url
from tasks.config import celery_config

MULTI = "postgresql://lad@10.0.0.11:5432,10.0.0.12:5433/lad_billing?target_session_attrs=read-write"


def test_several_hosts_reach_libpq_as_given():
    url = normalize_database_url(MULTI)
    assert url == ("postgresql+psycopg2://lad@/lad_billing?host=10.0.0.11:5432&host=10.0.0.12:5433"
                   "&target_session_attrs=read-write")
    _, kwargs = PGDialect_psycopg2().create_connect_args(make_url(url))
    assert kwargs["host"] == "10.0.0.11,10.0.0.12"
    assert kwargs["port"] == "5432,5433"
    assert kwargs["target_session_attrs"] == "read-write"
    assert kwargs["dbname"] == "lad_billing"
    assert Settings(database_url=MULTI).database_url == url


@pytest.mark.parametrize("url", ["postgresql+psycopg2://u:p@h:5432/db", "postgres://u@h/db?sslmode=require",
                                 "postgresql+psycopg2://u@/db?host=h:1"])
def test_one_host_is_left_as_it_is(url):
    assert normalize_database_url(url) == url.replace("postgres://", "postgresql+psycopg2://")
    assert _connect_timeout(normalize_database_url(url)) == CONNECT_TIMEOUT_SECONDS


def test_each_host_gets_a_short_connect_timeout():
    assert _connect_timeout(normalize_database_url(MULTI)) == CONNECT_TIMEOUT_PER_HOST_SECONDS


@pytest.mark.parametrize("url", [
    "sentinel://10.0.0.1:26379,10.0.0.2:26380,10.0.0.3/2?master=billing",
    "sentinel://10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2;sentinel://10.0.0.3/2?master=billing",
])
def test_sentinel_urls(url):
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379))
    assert (parsed.master, parsed.db, parsed.password) == ("billing", 2, None)
    assert parsed.kombu_url() == "sentinel://10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2;sentinel://10.0.0.3:26379/2"


def test_sentinel_url_defaults_and_password():
    parsed = parse_sentinel_url("sentinel://:s3cret@h1:1,h2:2")
    assert (parsed.master, parsed.db, parsed.password) == ("mymaster", 0, "s3cret")
    with pytest.raises(ValueError):
        parse_sentinel_url("sentinel:///0")


def test_a_sentinel_url_gives_a_client_that_asks_the_sentinels():
    client = redis_from_url("sentinel://127.0.0.1:1,127.0.0.1:2/3?master=billing", socket_timeout=1)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "billing"
    assert pool.connection_kwargs["db"] == 3
    assert [s.connection_pool.connection_kwargs["port"] for s in pool.sentinel_manager.sentinels] == [1, 2]


def test_plain_redis_urls_are_plain_clients():
    client = redis_from_url("redis://127.0.0.1:6390/4")
    assert client.connection_pool.connection_kwargs["db"] == 4


def test_celery_follows_the_sentinels():
    config = celery_config(Settings(redis_url="sentinel://h1:26379,h2:26379/0?master=billing"))
    assert config["broker_transport"] == "tasks.broker:SentinelTransport"
    assert config["broker_url"] == "sentinel://h1:26379/0;sentinel://h2:26379/0"
    # Celery would take CELERY_BROKER_URL from the environment over broker_url
    assert config["broker_read_url"] == config["broker_write_url"] == config["broker_url"]
    assert config["broker_transport_options"]["master_name"] == "billing"
    plain = celery_config(Settings(redis_url="redis://h:6379/0"))
    assert plain["broker_transport"] == "tasks.broker:Transport"
    assert "master_name" not in plain["broker_transport_options"]
