"""The Redis broker transport, fixed for a Redis that vanishes while the worker is running.

Two crashes of kombu 5.7's Redis transport, both ending the worker with "Unrecoverable error:
AttributeError(... 'NoneType' object has no attribute ...)":

1. Restore at close. kombu restores a channel's unacknowledged messages when the channel closes —
   including when Celery closes it because Redis went away, where the restore itself needs Redis.
   We do not restore at close: unacknowledged messages stay in Redis's unacked index and come back
   after the visibility timeout, and a charge whose message is lost anyway is re-enqueued by the
   pending sweep, so nothing depends on restoring them at close.
2. Acknowledging on a closed channel. When the connection drops, Celery closes the connection and
   kombu sets each channel's `connection` to None; a task that finishes afterwards (late acks: the
   charge committed, then the ack) acks on that channel: QoS.ack → _remove_from_indices →
   conn_or_acquire → pool → `_connparams` reads `self.connection.client` → AttributeError, which is
   no connection error, so Celery's "Couldn't ack" handler does not catch it and the worker dies (the
   family of celery/celery#10205). A closed channel has no broker to talk to: we raise the
   transport's own ConnectionError there, which Celery handles as it handles any lost connection —
   it logs the failed ack and carries on; the message stays unacknowledged and is redelivered later,
   where settling it again is a no-op (charging is idempotent per event).
"""
from kombu.transport import redis
from redis import exceptions as redis_errors


class QoS(redis.QoS):
    restore_at_shutdown = False


class _ClosedChannelFix:
    def _connparams(self, asynchronous: bool = False) -> dict:
        if self.connection is None:  # type: ignore[attr-defined]
            raise redis_errors.ConnectionError("this broker channel was closed when its connection was lost")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]


class Channel(_ClosedChannelFix, redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel


# Redis Sentinel (a `sentinel://` REDIS_URL / CELERY_BROKER_URL): kombu's sentinel channel, same two fixes
class SentinelChannel(_ClosedChannelFix, redis.SentinelChannel):
    QoS = QoS


class SentinelTransport(redis.SentinelTransport):
    Channel = SentinelChannel
