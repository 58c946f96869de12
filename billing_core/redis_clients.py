"""Redis clients from the service's Redis URLs: a plain server (`redis://`, `rediss://`) or a master found
through Redis Sentinel. Every Redis client of the service (caches and wake-ups, rate limits, the charge
outcome channel) and the Celery broker's settings are made here, so a Sentinel URL works everywhere.

The Sentinel form names every Sentinel, the database and the master's name:

    sentinel://[:password@]host1:26379,host2:26379,host3:26379/0?master=mymaster

(kombu's own `sentinel://h1:p1;sentinel://h2:p2` spelling is accepted too). A client made from it asks the
Sentinels for the current master on each new connection, so after a failover the next connection reaches
the new master: nothing restarts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel://"
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_MASTER_NAME = "mymaster"


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    password: str | None = None

    def kombu_url(self) -> str:
        """The broker URL in kombu's form (one `sentinel://` per Sentinel, `;`-separated); the master's name
        goes in the transport options (`master_name`)."""
        auth = f":{self.password}@" if self.password else ""
        return ";".join(f"sentinel://{auth}{host}:{port}/{self.db}" for host, port in self.sentinels)


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str) -> SentinelUrl:
    """`sentinel://h1:p1,h2:p2/0?master=name` (or kombu's `;`-separated form) → its parts; ValueError when
    it names no Sentinel."""
    if not is_sentinel_url(url):
        raise ValueError("not a sentinel:// URL")
    # kombu's form repeats the scheme per Sentinel: fold it into one comma-separated list
    parts = url.split(";")
    head = urlsplit(parts[0])
    netlocs = [head.netloc] + [urlsplit(part).netloc for part in parts[1:]]
    query = parse_qs(urlsplit(parts[-1]).query or head.query)
    password, sentinels = None, []
    for netloc in netlocs:
        if "@" in netloc:
            auth, netloc = netloc.rsplit("@", 1)
            password = unquote(auth.split(":", 1)[1]) if ":" in auth else unquote(auth) or None
        for address in filter(None, netloc.split(",")):
            host, _, port = address.rpartition(":") if address.count(":") == 1 else (address, "", "")
            sentinels.append((host, int(port) if port else DEFAULT_SENTINEL_PORT))
    if not sentinels:
        raise ValueError("a sentinel:// URL names at least one Sentinel host:port")
    path = head.path.strip("/")
    return SentinelUrl(tuple(sentinels), master=(query.get("master") or [DEFAULT_MASTER_NAME])[0],
                       db=int(path) if path else 0, password=password or None)


def redis_from_url(url: str, **options: Any) -> redis.Redis:
    """A Redis client for `url`. `options` are redis-py's connection options (socket_timeout, ...); for a
    Sentinel URL they apply to the master's connections and, for the timeouts, to the Sentinels' too."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    timeouts = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs={**timeouts, "password": parsed.password},
                        password=parsed.password, db=parsed.db, **options)
    return sentinel.master_for(parsed.master)
