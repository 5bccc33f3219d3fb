"""Execution state changes: claim, finish (fenced), cancel, lost; each one a conditional update."""

from __future__ import annotations

import logging
import os
import uuid
from datetime import timedelta

import psutil
from django.db import transaction
from django.db.models import DateTimeField, ExpressionWrapper, F
from django.utils import timezone

from ..executors.base import Outcome
from ..models import Execution
from .retries import execution_failure_handle

logger = logging.getLogger(__name__)

FAILURE_STATUSES = frozenset({Execution.Status.FAILED, Execution.Status.TIMED_OUT})
OUTCOME_STATUSES = FAILURE_STATUSES | {Execution.Status.SUCCEEDED, Execution.Status.CANCELLED}
OVERDUE_GRACE = timedelta(seconds=300)


def _release(execution_id: int) -> None:
    from nodes.services import allocation_release  # nodes imports jobs: import at call time

    allocation_release(execution_id=execution_id)


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def execution_claim(*, execution_id: int) -> Execution | None:
    """queued -> running with a fresh claim token, for this worker's node only; None if nothing to run."""
    from nodes.heartbeat import current_node_name

    node_name = current_node_name()
    if not node_name:
        logger.error("execution %s: this worker has no registered node; not claimed", execution_id)
        return None
    updated = Execution.objects.filter(
        pk=execution_id, status=Execution.Status.QUEUED, node__name=node_name
    ).update(
        status=Execution.Status.RUNNING,
        claim_token=uuid.uuid4(),
        started_at=timezone.now(),
        worker_pid=os.getpid(),
    )
    if updated:
        return Execution.objects.select_related("job").get(pk=execution_id)
    _stale_claim_resolve(execution_id=execution_id, node_name=node_name)
    return None


@transaction.atomic
def _stale_claim_resolve(*, execution_id: int, node_name: str) -> None:
    # The message came back for an execution this node already runs: with acks_late and
    # reject_on_worker_lost that means the process running it died (a poison job killing its worker).
    # That attempt failed, counted in the database, so a job that kills its worker cannot loop.
    execution = (
        Execution.objects.select_for_update()
        .filter(pk=execution_id, status=Execution.Status.RUNNING, node__name=node_name)
        .first()
    )
    if execution is None:
        logger.info("execution %s is not queued here any more: stale message dropped", execution_id)
        return
    pid = execution.worker_pid
    if pid and pid != os.getpid() and _pid_alive(pid):
        logger.info("execution %s still runs in pid %s: duplicate message dropped", execution_id, pid)
        return
    execution_mark_lost(
        execution_id=execution_id,
        reason=f"the worker process (pid {pid}) died while running it; its message was redelivered",
    )


def execution_stop_reason(*, execution_id: int, claim_token: uuid.UUID) -> str | None:
    """Why a running execution must stop (cancelled, lost, claim taken over), or None to go on."""
    row = Execution.objects.filter(pk=execution_id).values("status", "claim_token").first()
    if row is None:
        return "deleted"
    if row["status"] != Execution.Status.RUNNING:
        return str(row["status"])
    if row["claim_token"] != claim_token:
        return "claim taken over"
    return None


def execution_output_store(
    *, execution_id: int, claim_token: uuid.UUID, output: str, truncated: bool
) -> bool:
    """Store the live output tail of a running execution (only by the holder of the claim)."""
    return bool(
        Execution.objects.filter(pk=execution_id, claim_token=claim_token).update(
            output=output, output_truncated=truncated
        )
    )


def execution_progress_store(*, execution_id: int, claim_token: uuid.UUID, progress: float) -> bool:
    """Store a progress report (0..100) of a running execution."""
    return bool(
        Execution.objects.filter(
            pk=execution_id, claim_token=claim_token, status=Execution.Status.RUNNING
        ).update(progress=progress)
    )


@transaction.atomic
def execution_finish(*, execution_id: int, claim_token: uuid.UUID, outcome: Outcome) -> bool:
    """running -> outcome, only while the claim is ours (fencing); then retry or dead-letter a failure."""
    if outcome.status not in OUTCOME_STATUSES:
        raise ValueError(f"not an outcome status: {outcome.status!r}")
    fields = {
        "exit_code": outcome.exit_code,
        "output": outcome.output,
        "output_truncated": outcome.output_truncated,
        "result": outcome.result,
    }
    done = {"progress": 100.0} if outcome.status == Execution.Status.SUCCEEDED else {}
    updated = Execution.objects.filter(
        pk=execution_id, status=Execution.Status.RUNNING, claim_token=claim_token
    ).update(status=outcome.status, finished_at=timezone.now(), error=outcome.error[:10000], **fields, **done)
    if not updated:
        # Cancelled or lost meanwhile: keep what the run printed, never overwrite the newer status.
        Execution.objects.filter(pk=execution_id, claim_token=claim_token).update(**fields)
        logger.info("execution %s: claim no longer ours; result kept as output only", execution_id)
        return False
    _release(execution_id)  # in the same transaction: the status and the freed capacity land together
    if outcome.status in FAILURE_STATUSES:
        execution_failure_handle(execution=Execution.objects.select_related("job").get(pk=execution_id))
    return True


@transaction.atomic
def execution_cancel(*, execution_id: int, reason: str = "cancelled") -> bool:
    """Pending/queued/running -> cancelled; a running one is killed by its worker within about a second."""
    execution = (
        Execution.objects.select_for_update().filter(pk=execution_id, status__in=Execution.ACTIVE).first()
    )
    if execution is None:
        return False
    Execution.objects.filter(pk=execution_id).update(
        status=Execution.Status.CANCELLED, finished_at=timezone.now(), error=reason[:2000], pending_reason=""
    )
    if execution.status != Execution.Status.RUNNING:
        _release(execution_id)  # nothing runs it: free its capacity now (a running one frees it on exit)
    return True


@transaction.atomic
def execution_mark_lost(*, execution_id: int, reason: str) -> bool:
    """Queued/running on a dead node or process -> lost; release it; retry or dead-letter it."""
    updated = Execution.objects.filter(
        pk=execution_id, status__in=[Execution.Status.QUEUED, Execution.Status.RUNNING]
    ).update(status=Execution.Status.LOST, claim_token=None, finished_at=timezone.now(), error=reason[:2000])
    if not updated:
        return False
    _release(execution_id)
    execution_failure_handle(execution=Execution.objects.select_related("job").get(pk=execution_id))
    return True


@transaction.atomic
def execution_requeue(*, execution_id: int, reason: str) -> bool:
    """Queued on a node that left -> pending again, placed elsewhere without using up an attempt."""
    updated = Execution.objects.filter(pk=execution_id, status=Execution.Status.QUEUED).update(
        status=Execution.Status.PENDING, node=None, queued_at=None, pending_reason=reason[:255]
    )
    if not updated:
        return False
    _release(execution_id)  # frees the capacity and, on commit, asks for a placement pass
    return True


def executions_overdue_sweep(*, limit: int = 100) -> int:
    """Mark lost the running executions far past their timeout (their worker vanished without a trace)."""
    # started_at + timeout + grace < now, computed in SQL per job
    overdue_after = ExpressionWrapper(
        F("started_at") + F("job__timeout_seconds") * timedelta(seconds=1) + OVERDUE_GRACE,
        output_field=DateTimeField(),
    )
    ids = list(
        Execution.objects.filter(status=Execution.Status.RUNNING, started_at__isnull=False)
        .annotate(overdue_after=overdue_after)
        .filter(overdue_after__lt=timezone.now())
        .values_list("pk", flat=True)[:limit]
    )
    return sum(
        execution_mark_lost(execution_id=pk, reason="no result long after its timeout; its worker vanished")
        for pk in ids
    )
