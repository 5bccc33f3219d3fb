"""The task a worker runs for each execution, published to its node's own queue."""

from __future__ import annotations

from celery import shared_task

from .runner import execution_run


@shared_task(name="jobs.execute", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def execute(execution_id: int) -> None:
    """Claim, run and finish one execution on this worker (the name is stable: messages carry it)."""
    execution_run(execution_id=execution_id)
