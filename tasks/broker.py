"""The Redis broker transport, without kombu's restore-on-close of unacknowledged messages, and
with acks on a closed channel failing as connection errors.

With the Redis transport, kombu 5.7 restores a channel's unacknowledged messages when the
channel closes — including when Celery closes it because Redis went away, where the restore
itself needs Redis and crashes the worker ("Unrecoverable error: AttributeError ... hostname").
Unacknowledged messages stay in Redis's unacked index and come back after the visibility
timeout, and a charge whose message is lost anyway is re-enqueued by the pending sweep, so
nothing depends on restoring them at close.

Likewise a task that finishes while Redis is away acks (or rejects) on the channel Celery closed
meanwhile; kombu then fails with "AttributeError: 'NoneType' object has no attribute 'client'",
which Celery does not expect and which kills the worker (seen when the minute's beat jobs were
running as Redis stopped). Raised as a connection error instead, Celery logs "Couldn't ack" and
goes on; the message comes back after the visibility timeout, and every task is safe to run twice.
"""
import redis as redis_client
from kombu.transport import redis


class QoS(redis.QoS):
    restore_at_shutdown = False

    def ack(self, delivery_tag):  # noqa: ANN001, ANN201
        self._channel_open()
        return super().ack(delivery_tag)

    def reject(self, delivery_tag, requeue=False):  # noqa: ANN001, ANN201
        self._channel_open()
        return super().reject(delivery_tag, requeue=requeue)

    def _channel_open(self) -> None:
        if self.channel.connection is None:
            raise redis_client.exceptions.ConnectionError("the broker channel closed while the task ran")


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel
