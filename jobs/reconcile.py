"""The reconciler: executions `queued` in the database whose `jobs.execute` message the broker lost
(Redis restarted empty or flushed, or a process died between commit and publish) are published again."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models.functions import Now

from nodes.models import Node
from nodes.placement import node_queue_name

from .broker import broker_execution_ids
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
    present = broker_execution_ids(queue_names={node_queue_name(name) for _, name in rows} | {"default"})
    missing = [pk for pk, _ in rows if pk not in present]
    if not missing:
        return []
    # A message consumed while we looked is republished too: the worker's conditional claim drops it.
    republished = [pk for pk in missing if execution_republish(execution_id=pk)]
    logger.warning("reconciler: %d queued execution(s) missing from the broker republished", len(republished))
    return republished
