"""Celery tasks of the monitoring app: thin, each calls the services."""

from __future__ import annotations

import logging

from celery import shared_task

from jobs.tasks import periodic_tick
from monitoring import services

logger = logging.getLogger(__name__)


@shared_task(name="monitoring.ping")
def ping() -> str:
    """Answer 'pong': proves a worker takes tasks from the broker."""
    return "pong"


@shared_task(name="monitoring.evaluate_alerts", ignore_result=True)
def evaluate_alerts() -> None:
    """Fire and resolve alerts, then send the deliveries that are due (sent by beat every few seconds)."""
    with periodic_tick("alert evaluation"):
        fired, resolved = services.alerts_evaluate()
        sent = services.deliveries_send()
        if fired or resolved or sent:
            logger.info("alerts: %d fired, %d resolved, %d deliveries sent", fired, resolved, sent)


@shared_task(name="monitoring.prune_retention", ignore_result=True)
def prune_retention() -> None:
    """Retention (daily): drop the months of history older than SCHEDULER_RETENTION_DAYS."""
    pruned = services.history_prune()
    logger.info(
        "retention: %d executions pruned (months dropped: %s; %d kept)",
        pruned.executions,
        ", ".join(pruned.months_dropped) or "none",
        pruned.executions_kept,
    )


@shared_task(name="monitoring.history_partitions", ignore_result=True)
def history_partitions() -> None:
    """Create the history's monthly partitions ahead (hourly: cheap when they exist)."""
    services.history_partitions_ensure()
