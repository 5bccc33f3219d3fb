"""The reconciler: executions `queued` in the database whose `jobs.execute` message the broker lost
(Redis restarted empty or flushed, a RabbitMQ queue deleted or a broker restarted without persistence, or a
process died between commit and publish) are published again.

On Redis each message is read, so exactly the missing ones are republished. On RabbitMQ (AMQP cannot read
a message without taking it) a node queue holding fewer ready messages than the executions queued for it
in the database has lost some: every one of them queued longer than the threshold is republished (the
copies still in the queue find nothing to claim and are dropped by the worker). Messages delivered to a
worker and not yet claimed are not counted; with prefetch 1 and late acks that window is a moment, and
the threshold covers it. Stale copies in a queue can hide a loss until they are consumed."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Count
from django.db.models.functions import Now

from nodes.models import Node
from nodes.placement import node_queue_name

from .broker import broker_execution_ids, broker_ready_counts
from .models import Execution
from .services.firing import execution_republish

logger = logging.getLogger(__name__)


def executions_reconcile_broker(*, older_than_seconds: float) -> list[int]:
    """Republish executions queued longer than older_than_seconds whose message the broker lost."""
    rows = list(
        Execution.objects.filter(
            status=Execution.Status.QUEUED,
            queued_at__lt=Now() - timedelta(seconds=older_than_seconds),
            node__status__in=[Node.Status.ONLINE, Node.Status.DRAINING],  # an offline node's: to recovery
        )
        .order_by("queued_at")
        .values_list("pk", "node__name")
    )
    if not rows:
        return []
    if settings.BROKER_IS_AMQP:
        missing = _missing_by_count(rows)
    else:
        present = broker_execution_ids(queue_names={node_queue_name(name) for _, name in rows} | {"default"})
        missing = [pk for pk, _ in rows if pk not in present]
    if not missing:
        return []
    # A message consumed while we looked is republished too: the worker's conditional claim drops it.
    republished = [pk for pk in missing if execution_republish(execution_id=pk)]
    logger.warning("reconciler: %d queued execution(s) missing from the broker republished", len(republished))
    return republished


def _missing_by_count(rows: list[tuple[int, str]]) -> list[int]:
    """RabbitMQ: the old queued executions of each node queue that holds fewer ready messages than the
    database has executions queued for it (of any age: a young one's message may still be on its way)."""
    queued = dict(
        Execution.objects.filter(status=Execution.Status.QUEUED, node__name__in={name for _, name in rows})
        .values_list("node__name")
        .annotate(n=Count("pk"))
        .values_list("node__name", "n")
    )
    ready = broker_ready_counts(queue_names={node_queue_name(name) for name in queued})
    short = {name for name, n in queued.items() if ready.get(node_queue_name(name), 0) < n}
    if short:
        logger.warning(
            "reconciler: %s",
            ", ".join(
                f"{node_queue_name(n)} holds {ready.get(node_queue_name(n), 0)} of {queued[n]}" for n in short
            ),
        )
    return [pk for pk, name in rows if name in short]
