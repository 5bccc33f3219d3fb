"""Thin Celery tasks for the node sweeps (scheduled by CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from nodes.services import executions_reconcile_broker, nodes_reap_stale


@shared_task(name="nodes.reap_stale", ignore_result=True)
def reap_stale() -> list[str]:
    """Mark nodes that stopped heartbeating offline and recover their executions."""
    return nodes_reap_stale()


@shared_task(name="nodes.reconcile_broker", ignore_result=True)
def reconcile_broker() -> list[int]:
    """Republish queued executions whose broker message is gone (Redis restarted or flushed)."""
    return executions_reconcile_broker(older_than_seconds=settings.SCHEDULER_RECONCILE_SECONDS)
