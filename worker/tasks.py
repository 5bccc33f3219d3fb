"""The task a worker runs for each execution, published to its node's own queue."""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import Reject

from .dbretry import DB_UNAVAILABLE
from .runner import execution_run


@shared_task(name="jobs.execute", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def execute(execution_id: int) -> None:
    """Claim, run and finish one execution on this worker (the name is stable: messages carry it)."""
    try:
        execution_run(execution_id=execution_id)
    except DB_UNAVAILABLE as exc:
        # The claim could not reach the database for SCHEDULER_WORKER_DB_RETRY_SECONDS: nothing ran; the
        # message goes back to the queue for a later try (an outcome that could not be recorded is not
        # raised: the liveness check marks that run lost).
        raise Reject(f"database unavailable: {exc}", requeue=True) from exc
