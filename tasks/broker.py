"""The Redis broker transport, without kombu's restore-on-close of unacknowledged messages.

With the Redis transport, kombu 5.7 restores a channel's unacknowledged messages when the
channel closes — including when Celery closes it because Redis went away, where the restore
itself needs Redis and crashes the worker ("Unrecoverable error: AttributeError ... hostname").
Unacknowledged messages stay in Redis's unacked index and come back after the visibility
timeout, and a charge whose message is lost anyway is re-enqueued by the pending sweep, so
nothing depends on restoring them at close.
"""
from kombu.transport import redis


class QoS(redis.QoS):
    restore_at_shutdown = False


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel
