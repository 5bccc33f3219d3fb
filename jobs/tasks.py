"""Celery tasks of the jobs app: thin, take ids and JSON, call one service."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, connections
from django.utils.dateparse import parse_datetime

from nodes.services import nodes_reap_stale

from . import services
from .reconcile import executions_reconcile_broker

logger = logging.getLogger(__name__)
# The connection or the server is gone (or the statement was cut off), not a fault of the query.
DB_UNAVAILABLE = (OperationalError, InterfaceError)


@contextlib.contextmanager
def periodic_tick(what: str) -> Iterator[None]:
    """Around the body of a task beat sends every few seconds: a database that went away is one warning
    line and a closed connection (none left broken for the next task of this process); the next tick
    does the work."""
    try:
        yield
    except DB_UNAVAILABLE as exc:
        for conn in connections.all(initialized_only=True):
            if not conn.in_atomic_block:  # the caller's transaction owns it; atomic() drops it as it unwinds
                with contextlib.suppress(*DB_UNAVAILABLE):
                    conn.close()
        logger.warning("%s: database unavailable, the next tick does it: %s", what, _oneline(exc))


def _oneline(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


@shared_task(name="jobs.fire", ignore_result=True)
def fire(job_id: int, scheduled_for: str | None = None) -> None:
    """Fire one slot of a job (for a beat that sends a task per firing; ours fires in-process)."""
    slot = parse_datetime(scheduled_for) if scheduled_for else None
    if scheduled_for and slot is None:
        logger.error(
            "jobs.fire: scheduled_for %r is not an ISO-8601 time; job %s not fired", scheduled_for, job_id
        )
        return
    services.fire(job_id=job_id, scheduled_for=slot)


@shared_task(name="jobs.dispatch_pending", ignore_result=True)
def dispatch_pending() -> None:
    """Place pending executions on nodes with room."""
    with periodic_tick("placement pass"):
        services.pending_place_pass()


@shared_task(name="jobs.sweep_retries", ignore_result=True)
def sweep_retries() -> None:
    """Start due retries, mark lost the runs far past their timeout; recover what offline nodes still hold
    (a safety net: the reaper and a worker's shutdown recover in the same transaction)."""
    with periodic_tick("retry sweep"):
        services.executions_recover_offline()
        services.retries_sweep()
        services.executions_overdue_sweep()


@shared_task(name="jobs.reap_nodes", ignore_result=True)
def reap_nodes() -> list[str]:
    """Nodes that stopped heartbeating go offline; what they held is recovered in the same transaction."""
    with periodic_tick("node reaper"):
        return nodes_reap_stale(recover=_recover)
    return []


def _recover(node_id: int, reason: str) -> int:
    return services.executions_recover_node(node_id=node_id, reason=reason)


@shared_task(name="jobs.reconcile_broker", ignore_result=True)
def reconcile_broker() -> list[int]:
    """Republish queued executions whose broker message is gone (Redis restarted or flushed)."""
    with periodic_tick("broker reconciler"):
        return executions_reconcile_broker(older_than_seconds=settings.SCHEDULER_RECONCILE_SECONDS)
    return []


@shared_task(name="jobs.dead_letter", ignore_result=True)
def dead_letter(**notice: Any) -> None:
    """A dead-letter notice (published on the dead_letter queue for whoever watches it)."""
    logger.warning("dead letter: %s", notice)
