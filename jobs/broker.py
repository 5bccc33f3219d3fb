"""Read-only look into the broker, for the reconciler.

Redis: which executions have a "jobs.execute" message waiting or in flight. Kombu's Redis transport keeps a
queue as one list per priority step (`queue`, `queue:1`, ... `queue:9`) and the messages delivered to a
worker but not yet acknowledged in the `unacked` hash. Both are read through kombu's own channel, so the key
prefix, separator and priority steps are the ones the workers use.

RabbitMQ: AMQP cannot read a message without taking it, so only the count of ready messages per queue is
read (a passive queue declare, which creates nothing); see jobs/reconcile.py for how it is used.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable
from typing import Any

from celery import current_app
from kombu.exceptions import ChannelError

from .messages import EXECUTE_TASK

logger = logging.getLogger(__name__)


def _execution_id(raw: bytes | str) -> int | None:
    """The execution_id of a serialized "jobs.execute" message, None for any other message."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # unacked entries are [message, exchange, routing_key]
            message = message[0]
        if message.get("headers", {}).get("task") != EXECUTE_TASK:
            return None
        body: Any = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        return int(kwargs["execution_id"])
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error):
        logger.warning("broker: skipping a message that is not a readable jobs.execute message")
        return None


def broker_execution_ids(*, queue_names: Iterable[str]) -> set[int]:
    """Execution ids of "jobs.execute" messages waiting in these queues or delivered and not acknowledged."""
    with current_app.connection_for_read() as conn:
        channel: Any = conn.default_channel
        client = channel.client
        steps = sorted(set(channel.priority_steps))
        keys = [f"{queue}{channel.sep}{pri}" if pri else queue for queue in queue_names for pri in steps]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.lrange(key, 0, -1)
        pipe.hvals(channel.unacked_key)
        results = pipe.execute()
    found: set[int] = set()
    for raw_messages in results:
        for raw in raw_messages:
            execution_id = _execution_id(raw)
            if execution_id is not None:
                found.add(execution_id)
    return found


def broker_ready_counts(*, queue_names: Iterable[str]) -> dict[str, int]:
    """RabbitMQ: the messages ready (not delivered) in each queue; a queue that does not exist holds 0."""
    counts: dict[str, int] = {}
    with current_app.connection_for_read() as conn:
        channel: Any = conn.channel()
        try:
            for name in sorted(set(queue_names)):
                try:
                    counts[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except (
                    ChannelError
                ):  # 404: no such queue (the broker restarted without it); it closed the channel
                    counts[name] = 0
                    channel = conn.channel()
        finally:
            channel.close()
    return counts
