"""Firing and placement: from due slots (or "run now", a retry, a replay) to `jobs.execute` on a node's queue.

One path for all of them, batched: the executions are inserted in one statement (`INSERT ... ON CONFLICT
DO NOTHING` on the unique (job, slot, attempt), so a second firing of a slot is a no-op), the misfire and
concurrency policies decide which run, the schedules are bookkept, placement reserves capacity for the
rest (nodes.placement), they become `queued` and `jobs.execute` is published after commit: one broker
message per run. What does not fit stays `pending` with the reason and is placed by the pending pass when
capacity frees. A crash between commit and publish is repaired by the reconciler (jobs/reconcile.py).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask, PeriodicTasks

from nodes.placement import Demand, NoFit, Reservation, capacity_reserve, node_queue_name

from .. import messages
from ..models import DeadLetter, Execution, Job, JobRetry, JobSchedule
from ..schedules import schedule_next_run, schedule_slot_at
from . import executions
from .executions import Created, NewExecution

logger = logging.getLogger(__name__)
S = Execution.Status
PENDING_PASS_LIMIT = 500


@dataclass(frozen=True)
class Slot:
    """One due slot of a job, as beat fires it."""

    job_id: int
    scheduled_for: datetime


# --- policies ---------------------------------------------------------------------------------


def misfire_grace(schedule_type: str | None, every_seconds: int | None) -> timedelta:
    """How late a slot may start before the misfire policy applies: max(interval, the grace setting)."""
    grace = float(settings.SCHEDULER_MISFIRE_GRACE_SECONDS)
    if schedule_type == JobSchedule.Type.INTERVAL and every_seconds:
        grace = max(grace, float(every_seconds))
    return timedelta(seconds=grace)


def _misfire_reason(row: Created, now: datetime) -> str:
    grace = misfire_grace(row.schedule_type, row.every_seconds)
    late = now - row.scheduled_for
    if late <= grace:
        return ""
    if row.misfire_policy == Job.MisfirePolicy.SKIP:
        return f"missed by {late.total_seconds():.0f}s (misfire policy: skip)"
    # run_once: the first late slot runs; any other late slot it already covers is skipped.
    scheduled = Execution.objects.filter(job_id=row.job_id, trigger=Execution.Trigger.SCHEDULE)
    caught_up = (
        scheduled.filter(created_at__gt=row.scheduled_for + grace)
        .exclude(status=S.SKIPPED)
        .exclude(pk=row.id)
        .exists()
    )
    if caught_up or scheduled.filter(scheduled_for__gt=row.scheduled_for).exists():
        return f"missed by {late.total_seconds():.0f}s; covered by a later run (misfire policy: run_once)"
    return ""


def _concurrency(rows: Sequence[Created]) -> dict[int, str]:
    """Apply forbid / replace; returns execution id -> why it is skipped. Locks the jobs concerned."""
    guarded = sorted({r.job_id for r in rows if r.concurrency_policy != Job.ConcurrencyPolicy.ALLOW})
    if not guarded:
        return {}
    new_ids = [r.id for r in rows]
    with connection.cursor() as cursor:  # serialise with other firings of these jobs (id order: no deadlock)
        cursor.execute("SELECT id FROM jobs_job WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [guarded])
    active: dict[int, list[int]] = defaultdict(list)
    for pk, job_id in (
        Execution.objects.filter(job_id__in=guarded, status__in=Execution.ACTIVE)
        .exclude(pk__in=new_ids)
        .order_by("pk")
        .values_list("pk", "job_id")
    ):
        active[job_id].append(pk)
    skipped: dict[int, str] = {}
    for row in rows:
        if row.concurrency_policy == Job.ConcurrencyPolicy.ALLOW:
            continue
        if row.concurrency_policy == Job.ConcurrencyPolicy.FORBID:
            if active[row.job_id]:
                skipped[row.id] = (
                    f"execution {active[row.job_id][0]} is still active (concurrency policy: forbid)"
                )
            else:
                active[row.job_id].append(row.id)  # a second slot of this batch sees this one
            continue
        for pk in active[row.job_id]:
            executions.execution_cancel(
                execution_id=pk, reason=f"replaced by execution {row.id} (concurrency: replace)"
            )
        active[row.job_id] = [row.id]
    return skipped


def _skip(reasons: dict[int, str]) -> None:
    by_reason: dict[str, list[int]] = defaultdict(list)
    for pk, reason in reasons.items():
        by_reason[reason].append(pk)
    for reason, ids in by_reason.items():
        executions.executions_skip(ids=ids, reason=reason)


# --- placement --------------------------------------------------------------------------------


def _place(rows: Sequence[Created]) -> int:
    """Reserve capacity for pending executions and queue them; the rest wait with the reason."""
    if not rows:
        return 0
    demands = [
        Demand(holder_id=r.id, cpu=r.cpu, memory_mb=r.memory_mb, selector=r.node_selector or {}) for r in rows
    ]
    placed: list[tuple[int, int]] = []
    by_reason: dict[str, list[int]] = defaultdict(list)
    for row, placement in zip(rows, capacity_reserve(demands=demands), strict=True):
        if isinstance(placement, Reservation):
            placed.append((row.id, placement.node_id))
        elif isinstance(placement, NoFit):
            by_reason[placement.reason].append(row.id)
    executions.executions_queue(placements=placed)  # one statement, however many nodes the batch spans
    for reason, ids in by_reason.items():
        executions.executions_wait(ids=ids, reason=reason)
    if by_reason:
        messages.pending_waiting_mark()
    return len(placed)


def pending_place(*, limit: int = PENDING_PASS_LIMIT) -> int:
    """One placement pass: pending executions, highest priority first, then oldest; how many were placed."""
    messages.pending_waiting_clear()  # first: a no-fit committed after our read marks it again
    with transaction.atomic():
        return _place(executions.executions_pending_lock(limit=limit))


def pending_place_pass() -> int:
    """The `jobs.dispatch_pending` task: clear the queued flag first, then place what fits."""
    messages.dispatch_pass_started()
    return pending_place()


# --- firing -----------------------------------------------------------------------------------


def _bookkeep(rows: Sequence[Created], skipped: dict[int, str], now: datetime) -> None:
    """Schedules of the fired slots: total_runs, last_run_at, next_run_at; exhausted ones complete."""
    schedules = {
        s.job_id: s
        for s in JobSchedule.objects.select_related("job").filter(job_id__in=[r.job_id for r in rows])
    }
    updates: dict[int, JobSchedule] = {}
    for row in rows:
        schedule = schedules.get(row.job_id)
        if schedule is None:
            continue
        if row.id not in skipped:
            schedule.total_runs += 1
            schedule.last_run_at = now
        schedule.next_run_at = schedule_next_run(schedule, after=max(now, row.scheduled_for))
        updates[schedule.pk] = schedule
    if not updates:
        return
    JobSchedule.objects.bulk_update(list(updates.values()), ["total_runs", "last_run_at", "next_run_at"])
    done = [s.job_id for s in updates.values() if s.next_run_at is None]
    if done:
        # once ran, max_runs reached or end_at passed: nothing will fire again.
        Job.objects.filter(pk__in=done, status=Job.Status.ACTIVE).update(status=Job.Status.COMPLETED)
        if PeriodicTask.objects.filter(name__in=[f"job:{pk}" for pk in done], enabled=True).update(
            enabled=False
        ):
            PeriodicTasks.update_changed()


def _start(rows: Sequence[Created], *, now: datetime, policies: bool, bookkeep: bool) -> dict[int, str]:
    skipped: dict[int, str] = {}
    if policies:
        for row in rows:
            if row.trigger == Execution.Trigger.SCHEDULE and (reason := _misfire_reason(row, now)):
                skipped[row.id] = reason
        skipped.update(_concurrency([r for r in rows if r.id not in skipped]))
        _skip(skipped)
    if bookkeep:
        _bookkeep(rows, skipped, now)
    _place([r for r in rows if r.id not in skipped])
    return skipped


def slots_fire(*, slots: Sequence[Slot], now: datetime | None = None) -> list[int]:
    """Beat's firing of a tick's due slots, in one transaction; the ids of the executions created.

    Slots of jobs that are not active, and slots fired before, create nothing.
    """
    if not slots:
        return []
    now = now or timezone.now()
    with transaction.atomic():
        rows = executions.executions_create(
            items=[
                NewExecution(job_id=s.job_id, scheduled_for=s.scheduled_for, trigger="schedule")
                for s in slots
            ],
            now=now,
            only_active=True,
        )
        if len(rows) < len(slots):
            logger.info(
                "%d of %d slot(s) fired before or not active: ignored", len(slots) - len(rows), len(slots)
            )
        _start(rows, now=now, policies=True, bookkeep=True)
    return [r.id for r in rows]


def fire(*, job_id: int, scheduled_for: datetime | None = None) -> Execution | None:
    """One slot of one job (the `jobs.fire` task, for schedulers that send one task per firing)."""
    if scheduled_for is None:  # the stock DatabaseScheduler does not pass the slot: derive it
        schedule = JobSchedule.objects.select_related("job").filter(job_id=job_id).first()
        now = timezone.now()
        scheduled_for = schedule_slot_at(schedule, at=now) if schedule else now.replace(microsecond=0)
    ids = slots_fire(slots=[Slot(job_id=job_id, scheduled_for=scheduled_for)])
    return Execution.objects.select_related("job", "node").get(pk=ids[0]) if ids else None


def executions_start(*, jobs: Sequence[Job], trigger: str = Execution.Trigger.MANUAL) -> list[Execution]:
    """Run now: one execution per job (slot = now), concurrency policy applied, placed, published on commit.

    Call inside transaction.atomic() with the jobs' rows locked (job_trigger does).
    """
    now = timezone.now()
    rows = executions.executions_create(
        items=[NewExecution(job_id=job.pk, scheduled_for=now, trigger=trigger) for job in jobs], now=now
    )
    if len(rows) < len(jobs):  # the same microsecond twice: practically never
        raise ValidationError({"job": ["an execution for this instant exists already; try again"]})
    _start(rows, now=now, policies=True, bookkeep=False)
    found = Execution.objects.select_related("job", "node").in_bulk([r.id for r in rows])
    return [found[r.id] for r in rows]


# --- retries and replays ------------------------------------------------------------------------


def retries_sweep(*, limit: int = 100, now: datetime | None = None) -> int:
    """Start the next attempt of every due JobRetry (same slot, attempt + 1); returns how many started."""
    now = now or timezone.now()
    with transaction.atomic():
        due = list(
            JobRetry.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("job", "failed_execution")
            .filter(status=JobRetry.Status.WAITING, retry_at__lte=now)
            .order_by("retry_at")[:limit]
        )
        live = [r for r in due if r.job.status in (Job.Status.ACTIVE, Job.Status.COMPLETED)]
        JobRetry.objects.filter(pk__in=[r.pk for r in due if r not in live]).update(
            status=JobRetry.Status.CANCELLED
        )
        items = [
            NewExecution(
                job_id=r.job_id,
                scheduled_for=r.failed_execution.scheduled_for,
                trigger=Execution.Trigger.RETRY,
                attempt=r.next_attempt,
                retry_of_id=r.failed_execution_id,
            )
            for r in live
        ]
        rows = executions.executions_create(items=items, now=now)
        created = {(r.job_id, r.attempt, r.scheduled_for): r.id for r in rows}
        for retry, item in zip(live, items, strict=True):
            new_id = created.get((item.job_id, item.attempt, item.scheduled_for))
            if new_id is None:  # created before (a sweep cut off after its insert): link that one
                new_id = Execution.objects.values_list("pk", flat=True).get(
                    job_id=item.job_id, scheduled_for=item.scheduled_for, attempt=item.attempt
                )
            JobRetry.objects.filter(pk=retry.pk).update(status=JobRetry.Status.ENQUEUED, new_execution=new_id)
        # Retries bypass the concurrency policy: the attempt belongs to a slot that was allowed to run.
        _start(rows, now=now, policies=False, bookkeep=False)
    return len(live)


@transaction.atomic
def dead_letter_replay(*, dead_letter_id: int) -> Execution:
    """Run a dead execution again: a fresh execution (slot = now, trigger replay) linked to the dead one."""
    dead = (
        DeadLetter.objects.select_for_update()
        .select_related("job", "execution")
        .filter(pk=dead_letter_id)
        .first()
    )
    if dead is None:
        raise ValidationError({"dead_letter": f"dead letter {dead_letter_id} does not exist"})
    if dead.job.status == Job.Status.ARCHIVED:
        raise ValidationError({"dead_letter": f"job {dead.job_id} is archived; it cannot be replayed"})
    now = timezone.now()
    rows = executions.executions_create(
        items=[
            NewExecution(
                job_id=dead.job_id,
                scheduled_for=now,
                trigger=Execution.Trigger.REPLAY,
                replay_of_id=dead.execution_id,
            )
        ],
        now=now,
    )
    if not rows:
        raise ValidationError({"dead_letter": ["an execution for this instant exists already; try again"]})
    DeadLetter.objects.filter(pk=dead.pk).update(
        status=DeadLetter.Status.REPLAYED, replay_count=dead.replay_count + 1, last_replayed_at=now
    )
    _start(rows, now=now, policies=False, bookkeep=False)
    return Execution.objects.select_related("job", "node").get(pk=rows[0].id)


def execution_republish(*, execution_id: int) -> bool:
    """Publish "jobs.execute" again (after commit) for an execution still queued (its message was lost)."""
    row = (
        Execution.objects.filter(pk=execution_id, status=S.QUEUED, node__isnull=False)
        .values("node__name", "job__priority", "job__timeout_seconds")
        .first()
    )
    if row is None:
        return False
    messages.execute_publish_on_commit(
        [
            messages.ExecuteMessage(
                execution_id=execution_id,
                queue=node_queue_name(row["node__name"]),
                priority=row["job__priority"],
                timeout_seconds=row["job__timeout_seconds"],
            )
        ]
    )
    return True
