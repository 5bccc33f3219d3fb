"""Job lifecycle: create, update, pause, resume, delete (archive) and trigger now."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from ..models import Execution, Job, JobSchedule
from ..schedules import ScheduleSpec, periodic_task_disable, periodic_task_sync, schedule_next_run
from ..validation import JOB_DEFAULTS, JOB_FIELDS, job_input_clean
from .executions import execution_cancel
from .firing import executions_start
from .retries import job_retries_cancel

logger = logging.getLogger(__name__)
User = AbstractBaseUser | AnonymousUser


def host_access(kind: str, payload: Any) -> bool:
    """Whether a job reaches the worker's host: a shell job, or a container on the host's network."""
    if kind == Job.Kind.SHELL:
        return True
    return kind == Job.Kind.CONTAINER and isinstance(payload, dict) and payload.get("network") == "bridge"


def shell_permission_check(*, user: Any, kind: str, payload: Any = None) -> None:
    """Shell jobs run commands on the workers: they need SCHEDULER_ALLOW_SHELL_JOBS and jobs.run_shell.
    A container job on the `bridge` network reaches the host's network (its services, the cloud metadata
    address): it needs jobs.run_shell too; one with network none (the default) does not."""
    if kind == Job.Kind.CONTAINER and host_access(kind, payload):
        if user is None or not user.has_perm("jobs.run_shell"):
            raise PermissionDenied(
                "container jobs on the 'bridge' network reach the worker host's network: they need the"
                " permission jobs.run_shell (network 'none' does not)"
            )
        return
    if kind != Job.Kind.SHELL:
        return
    if not settings.SCHEDULER_ALLOW_SHELL_JOBS:
        raise PermissionDenied("shell jobs are disabled on this installation (SCHEDULER_ALLOW_SHELL_JOBS)")
    if user is None or not user.has_perm("jobs.run_shell"):
        raise PermissionDenied("shell jobs need the permission jobs.run_shell")


def _schedule_write(job: Job, spec: ScheduleSpec | None) -> None:
    """Replace the job's schedule by `spec` (None removes it), recompute next_run_at, sync beat."""
    existing = JobSchedule.objects.filter(job=job).first()
    if spec is None:
        if existing is not None:
            periodic_task_disable(job=job)
            existing.delete()
        periodic_task_sync(job=job)
        return
    schedule = existing or JobSchedule(job=job)
    for name, value in spec.fields().items():
        setattr(schedule, name, value)
    schedule.job = job
    schedule.next_run_at = schedule_next_run(schedule, after=timezone.now())
    schedule.save()
    periodic_task_sync(job=job)
    schedule.refresh_from_db(fields=["periodic_task"])


@transaction.atomic
def job_create(
    *,
    owner: Any,
    name: str,
    kind: str,
    payload: Any,
    schedule: Mapping[str, Any] | None = None,
    description: str = "",
    priority: int = 5,
    cpu: Decimal | float | str = Decimal("0.1"),
    memory_mb: int = 64,
    node_selector: Mapping[str, str] | None = None,
    timeout_seconds: int | None = None,
    max_retries: int = 0,
    retry_backoff_seconds: int = 10,
    retry_backoff_max_seconds: int = 3600,
    retry_jitter: bool = True,
    concurrency_policy: str = Job.ConcurrencyPolicy.ALLOW,
    misfire_policy: str = Job.MisfirePolicy.RUN_ONCE,
    idempotency_key: str = "",
) -> Job:
    """Validate and create a job, its schedule and its PeriodicTask in one transaction."""
    data = {key: value for key, value in locals().items() if key in JOB_FIELDS}
    if idempotency_key:
        existing = Job.objects.filter(owner=owner, idempotency_key=idempotency_key.strip()).first()
        if existing is not None:
            return existing
    fields, spec = job_input_clean(data, schedule=schedule)
    shell_permission_check(user=owner, kind=fields["kind"], payload=fields["payload"])
    job = Job.objects.create(owner=owner, **fields)
    _schedule_write(job, spec)
    logger.info("job %s created by %s", job.pk, owner)
    return job


@transaction.atomic
def job_update(*, job: Job, actor: Any = None, **changes: Any) -> Job:
    """Change a job's fields and/or its schedule ("schedule": {...} or None); validated like job_create."""
    unknown = set(changes) - set(JOB_FIELDS) - {"schedule"}
    if unknown:
        raise ValidationError({name: ["is not a job field"] for name in sorted(unknown)})
    job = Job.objects.select_for_update().get(pk=job.pk)
    if job.status == Job.Status.ARCHIVED:
        raise ValidationError({"status": ["the job is archived; it cannot be changed"]})
    current = {name: getattr(job, name) for name in JOB_FIELDS}
    fields, spec = job_input_clean(
        {**current, **changes}, schedule=changes.get("schedule"), check_schedule="schedule" in changes
    )
    if host_access(fields["kind"], fields["payload"]) and (
        not host_access(job.kind, job.payload) or "payload" in changes or "kind" in changes
    ):
        shell_permission_check(user=actor if actor is not None else job.owner, kind=fields["kind"],
                               payload=fields["payload"])  # fmt: skip
    for name, value in fields.items():
        setattr(job, name, value)
    job.save()
    if "schedule" in changes:
        _schedule_write(job, spec)
        if job.status == Job.Status.COMPLETED and _has_future_runs(job):
            Job.objects.filter(pk=job.pk).update(status=Job.Status.ACTIVE)
            job.status = Job.Status.ACTIVE
        periodic_task_sync(job=job)
    return job


def _has_future_runs(job: Job) -> bool:
    return JobSchedule.objects.filter(job=job, next_run_at__isnull=False).exists()


@transaction.atomic
def job_pause(*, job: Job) -> bool:
    """active -> paused: nothing fires (its PeriodicTask disabled), waiting retries cancelled."""
    if not Job.objects.filter(pk=job.pk, status=Job.Status.ACTIVE).update(status=Job.Status.PAUSED):
        return False
    job.status = Job.Status.PAUSED
    periodic_task_sync(job=job)
    job_retries_cancel(job=job)
    return True


@transaction.atomic
def job_resume(*, job: Job) -> bool:
    """paused -> active: fires again from the next slot after now (slots missed while paused are not run)."""
    if not Job.objects.filter(pk=job.pk, status=Job.Status.PAUSED).update(status=Job.Status.ACTIVE):
        return False
    job.status = Job.Status.ACTIVE
    schedule = JobSchedule.objects.filter(job=job).first()
    if schedule is not None:
        schedule.next_run_at = schedule_next_run(schedule, after=timezone.now())
        schedule.save(update_fields=["next_run_at"])
        if schedule.next_run_at is None:
            Job.objects.filter(pk=job.pk).update(status=Job.Status.COMPLETED)
            job.status = Job.Status.COMPLETED
    periodic_task_sync(job=job)
    return True


@transaction.atomic
def job_delete(*, job: Job) -> bool:
    """Archive a job (kept for its history): its PeriodicTask disabled, waiting work cancelled."""
    if (
        not Job.objects.filter(pk=job.pk)
        .exclude(status=Job.Status.ARCHIVED)
        .update(status=Job.Status.ARCHIVED)
    ):
        return False
    job.status = Job.Status.ARCHIVED
    periodic_task_disable(job=job)
    job_retries_cancel(job=job)
    waiting = Execution.objects.filter(
        job=job, status__in=[Execution.Status.PENDING, Execution.Status.QUEUED]
    )
    for pk in waiting.values_list("pk", flat=True):
        execution_cancel(execution_id=pk, reason="the job was deleted")
    return True


@transaction.atomic
def job_trigger(*, job: Job) -> Execution:
    """Run now: a new execution (slot = now, trigger manual), concurrency policy applied, placed and
    published in this request."""
    job = Job.objects.select_for_update().get(pk=job.pk)
    if job.status == Job.Status.ARCHIVED:
        raise ValidationError({"job": [f"job {job.pk} is archived; it cannot run"]})
    return executions_start(jobs=[job])[0]


__all__ = ["JOB_DEFAULTS", "job_create", "job_delete", "job_pause", "job_resume", "job_trigger", "job_update"]
