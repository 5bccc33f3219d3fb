"""Fire, place, publish: from a due slot to a message on the chosen node's queue."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from .models import Execution, Job, JobSchedule
from .schedules import periodic_task_sync, schedule_next_run, schedule_slot_at

logger = logging.getLogger(__name__)

# Room for the worker to record a result after the executor killed a run at the job's timeout.
HARD_LIMIT_MARGIN_SECONDS = 120
# Set while a placement pass is queued and has not started yet; a lost message cannot wedge it for long.
DISPATCH_QUEUED_KEY = "jobs:dispatch-pending-queued"
DISPATCH_QUEUED_TTL = 30


def broker_priority(job_priority: int) -> int:
    """Our priority 0-9 (9 highest) as kombu's Redis priority, where 0 is consumed first (inverted)."""
    return 9 - max(0, min(9, int(job_priority)))


def _publish_execute(*, execution_id: int, queue: str, priority: int, timeout_seconds: int) -> None:
    current_app.send_task(
        "jobs.execute",
        kwargs={"execution_id": execution_id},
        queue=queue,
        priority=broker_priority(priority),
        time_limit=timeout_seconds + HARD_LIMIT_MARGIN_SECONDS,  # a backstop; the executor kills first
    )


@transaction.atomic
def execution_dispatch(*, execution_id: int) -> bool:
    """pending -> queued on a node with room; publish "jobs.execute" on commit. False if it stays pending."""
    execution = (
        Execution.objects.select_for_update()
        .select_related("job")
        .filter(pk=execution_id, status=Execution.Status.PENDING)
        .first()
    )
    if execution is None:
        return False
    return _dispatch_locked(execution, fresh=False)


def _dispatch_locked(execution: Execution, *, fresh: bool) -> bool:
    """Place a pending execution whose row this transaction holds (locked, or inserted by it: `fresh`)."""
    from nodes.placement import allocation_reserve  # nodes imports jobs: import at call time

    placement = allocation_reserve(execution=execution, fresh=fresh)
    if placement.allocation is None:
        Execution.objects.filter(pk=execution.pk).update(pending_reason=placement.reason[:255])
        execution.pending_reason = placement.reason[:255]
        return False
    node = placement.allocation.node
    now = timezone.now()
    Execution.objects.filter(pk=execution.pk, status=Execution.Status.PENDING).update(
        status=Execution.Status.QUEUED, node=node, queued_at=now, pending_reason=""
    )
    execution.status, execution.node, execution.queued_at = Execution.Status.QUEUED, node, now
    execution.pending_reason = ""
    execution_id, job = execution.pk, execution.job
    transaction.on_commit(
        lambda: _publish_execute(
            execution_id=execution_id,
            queue=node.queue_name,
            priority=job.priority,
            timeout_seconds=job.timeout_seconds,
        )
    )
    return True


def pending_dispatch(*, limit: int = 200) -> int:
    """Try to place pending executions, highest priority first, then oldest; returns how many were placed."""
    ids = list(
        Execution.objects.filter(status=Execution.Status.PENDING)
        .order_by("-job__priority", "created_at")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(execution_dispatch(execution_id=pk) for pk in ids)


def _send_dispatch_pending() -> None:
    # Coalesced, never dropped: while a pass is queued and not started, later nudges ride on it (it will see
    # their changes); the pass clears the flag as it starts, so a nudge during or after it sends another.
    if cache.add(DISPATCH_QUEUED_KEY, 1, timeout=DISPATCH_QUEUED_TTL):
        current_app.send_task("jobs.dispatch_pending")


def pending_dispatch_soon() -> None:
    """Send "jobs.dispatch_pending" after commit, unless a pass is already queued and not yet started."""
    transaction.on_commit(_send_dispatch_pending)


def pending_dispatch_pass() -> int:
    """One placement pass, as the task runs it: clear the queued flag first, then place what fits."""
    cache.delete(DISPATCH_QUEUED_KEY)
    return pending_dispatch()


def execution_republish(*, execution_id: int) -> bool:
    """Publish "jobs.execute" again for an execution still queued (its message was lost)."""
    execution = (
        Execution.objects.select_related("job", "node")
        .filter(pk=execution_id, status=Execution.Status.QUEUED, node__isnull=False)
        .first()
    )
    if execution is None or execution.node is None:
        return False
    queue, job = execution.node.queue_name, execution.job
    transaction.on_commit(
        lambda: _publish_execute(
            execution_id=execution_id, queue=queue, priority=job.priority, timeout_seconds=job.timeout_seconds
        )
    )
    return True


# --- firing -----------------------------------------------------------------------------------


def misfire_grace(schedule: JobSchedule | None) -> timedelta:
    """How late a slot may start before the misfire policy applies: max(interval, the grace setting)."""
    grace = float(settings.SCHEDULER_MISFIRE_GRACE_SECONDS)
    if schedule is not None and schedule.type == JobSchedule.Type.INTERVAL and schedule.every_seconds:
        grace = max(grace, float(schedule.every_seconds))
    return timedelta(seconds=grace)


def _misfire_reason(job: Job, schedule: JobSchedule | None, execution: Execution, now: datetime) -> str:
    grace = misfire_grace(schedule)
    slot = execution.scheduled_for
    late = now - slot
    if late <= grace:
        return ""
    if job.misfire_policy == Job.MisfirePolicy.SKIP:
        return f"missed by {late.total_seconds():.0f}s (misfire policy: skip)"
    # run_once: the first late slot runs; any other late slot it already covers is skipped.
    caught_up = (
        Execution.objects.filter(job=job, trigger=Execution.Trigger.SCHEDULE, created_at__gt=slot + grace)
        .exclude(status=Execution.Status.SKIPPED)
        .exclude(pk=execution.pk)
        .exists()
    )
    newer = Execution.objects.filter(job=job, trigger=Execution.Trigger.SCHEDULE, scheduled_for__gt=slot)
    if caught_up or newer.exists():
        return f"missed by {late.total_seconds():.0f}s; covered by a later run (misfire policy: run_once)"
    return ""


def _concurrency_reason(job: Job, execution: Execution) -> str:
    """Apply the concurrency policy; returns why this execution is skipped ('' to run it)."""
    if job.concurrency_policy == Job.ConcurrencyPolicy.ALLOW:
        return ""
    active = list(
        Execution.objects.filter(job=job, status__in=Execution.ACTIVE)
        .exclude(pk=execution.pk)
        .values_list("pk", flat=True)
    )
    if not active:
        return ""
    if job.concurrency_policy == Job.ConcurrencyPolicy.FORBID:
        return f"execution {active[0]} is still active (concurrency policy: forbid)"
    from .services.executions import execution_cancel

    for pk in active:
        execution_cancel(
            execution_id=pk, reason=f"replaced by execution {execution.pk} (concurrency: replace)"
        )
    return ""


def _slot_execution(job: Job, slot: datetime, trigger: str, **extra: object) -> Execution | None:
    """Create the slot's first attempt; None when it exists already (a duplicate fire is a no-op)."""
    try:
        with transaction.atomic():
            return Execution.objects.create(job=job, scheduled_for=slot, attempt=1, trigger=trigger, **extra)
    except IntegrityError:
        return None


def execution_start(
    *, job: Job, slot: datetime, trigger: str, schedule: JobSchedule | None = None, **extra: object
) -> Execution | None:
    """Create the execution for a slot, apply misfire and concurrency policies, dispatch it (job locked).

    Call inside transaction.atomic() (fire and job_trigger hold the job's row lock).
    """
    now = timezone.now()
    execution = _slot_execution(job, slot, trigger, **extra)
    if execution is None:
        logger.info("job %s slot %s already has an execution: duplicate fire ignored", job.pk, slot)
        return None
    reason = _misfire_reason(job, schedule, execution, now) if trigger == Execution.Trigger.SCHEDULE else ""
    reason = reason or _concurrency_reason(job, execution)
    if reason:
        Execution.objects.filter(pk=execution.pk).update(
            status=Execution.Status.SKIPPED, finished_at=now, pending_reason="", error=reason[:2000]
        )
        execution.refresh_from_db()
        return execution
    # Inserted by this (caller's) transaction and still pending: no one else sees it, so place it
    # as it is, without locking and reading it back.
    _dispatch_locked(execution, fresh=True)
    return execution


@transaction.atomic
def fire(*, job_id: int, scheduled_for: datetime | None = None) -> Execution | None:
    """Beat's firing of one slot: one execution per (job, slot), policies applied, schedule bookkept."""
    job = Job.objects.select_for_update().filter(pk=job_id).first()
    if job is None:
        logger.warning("fire: job %s does not exist", job_id)
        return None
    if job.status != Job.Status.ACTIVE:
        logger.info("fire: job %s is %s; nothing fired", job_id, job.status)
        return None
    schedule = JobSchedule.objects.select_for_update().filter(job=job).first()
    now = timezone.now()
    if scheduled_for is None:  # the stock DatabaseScheduler does not pass the slot: derive it
        scheduled_for = schedule_slot_at(schedule, at=now) if schedule else now.replace(microsecond=0)
    execution = execution_start(
        job=job, slot=scheduled_for, trigger=Execution.Trigger.SCHEDULE, schedule=schedule
    )
    if execution is not None and schedule is not None:
        _schedule_bookkeep(job, schedule, execution, now)
    return execution


def _schedule_bookkeep(job: Job, schedule: JobSchedule, execution: Execution, now: datetime) -> None:
    if execution.status != Execution.Status.SKIPPED:
        schedule.total_runs += 1
        schedule.last_run_at = now
    schedule.next_run_at = schedule_next_run(schedule, after=max(now, execution.scheduled_for))
    schedule.save(update_fields=["total_runs", "last_run_at", "next_run_at"])
    if schedule.next_run_at is None:
        # once ran, max_runs reached or end_at passed: nothing will fire again.
        Job.objects.filter(pk=job.pk, status=Job.Status.ACTIVE).update(status=Job.Status.COMPLETED)
        job.status = Job.Status.COMPLETED
        periodic_task_sync(job=job)
