"""Bulk submission and triggering: many jobs in one transaction, all or nothing.

Every item is checked by the code that checks a single job (jobs.validation, shell_permission_check), and
the batch is written with one statement per table, holding exactly what job_create would have written.
Errors are keyed "<index>.<field>" ("3.payload.command"); errors about the batch itself have no field.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask, PeriodicTasks

from accounts.permissions import scope_to_user

from ..models import Execution, Job, JobSchedule
from ..schedules import ScheduleSpec, beat_schedule_fields_bulk, periodic_task_values, schedule_next_run
from ..validation import (
    JOB_FIELDS,
    PlacementCheck,
    idempotency_key_clean,
    job_input_clean,
    placement_check_memo,
)
from .firing import executions_start
from .jobs import shell_permission_check

logger = logging.getLogger(__name__)

REQUIRED = ("name", "kind", "payload")
# What one item may hold: job_create's arguments; the Idempotency-Key belongs to the batch.
ITEM_FIELDS = frozenset({*JOB_FIELDS, "schedule"} - {"idempotency_key"})
Cleaned = tuple[dict[str, Any], ScheduleSpec | None]


@dataclass(frozen=True)
class BulkCreated:
    """The jobs of a batch, in item order; created is False for an earlier batch's key.

    Jobs just created come with their schedule loaded (job.schedule costs no query).
    """

    jobs: list[Job]
    created: bool


class ItemsPermissionDenied(PermissionDenied):
    """PermissionDenied for some items of a batch: `fields` names each one ("3.kind")."""

    def __init__(self, message: str, fields: Sequence[str]) -> None:
        super().__init__(message)
        self.fields = list(fields)


def jobs_bulk_errors(*, items: Sequence[Any]) -> dict[str, list[str]]:
    """Every input error of a batch, keyed "<index>.<field>"; None items (refused by the caller) skipped."""
    _, errors = _items_clean(items, skip_none=True)
    return errors


@transaction.atomic
def jobs_create_bulk(*, owner: Any, items: Sequence[Any], idempotency_key: str = "") -> BulkCreated:
    """Validate and create many jobs (schedules, PeriodicTasks) in one transaction, or none at all."""
    key = idempotency_key.strip()
    if key:
        earlier = _batch_of(owner, key)
        if earlier:
            return BulkCreated(jobs=earlier, created=False)
        key = idempotency_key_clean(key)
    cleaned, errors = _items_clean(items)
    if errors:
        raise ValidationError(errors)
    _shell_check(owner, cleaned)
    try:
        with transaction.atomic():
            jobs = _jobs_write(owner, cleaned, key)
    except IntegrityError:
        # A concurrent batch with the same key won the unique (owner, key) index: its jobs are the answer.
        earlier = _batch_of(owner, key) if key else []
        if not earlier:
            raise
        return BulkCreated(jobs=earlier, created=False)
    logger.info("%d jobs created by %s (ids %s-%s)", len(jobs), owner, jobs[0].pk, jobs[-1].pk)
    return BulkCreated(jobs=jobs, created=True)


@transaction.atomic
def jobs_trigger_bulk(*, actor: Any, jobs: Sequence[int]) -> list[Execution]:
    """Run many jobs now, all or nothing: one manual execution each, as job_trigger makes it."""
    _size_check(jobs)
    ids = {job_id for job_id in jobs if _is_id(job_id)}
    # Locked in id order, so two batches naming the same jobs in different orders cannot deadlock.
    visible = scope_to_user(Job.objects.filter(pk__in=ids), actor).order_by("pk").select_for_update()
    found = {job.pk: job for job in visible}
    errors: dict[str, list[str]] = {}
    first_at: dict[int, int] = {}
    for index, job_id in enumerate(jobs):
        if not _is_id(job_id):
            errors[str(index)] = ["must be a job id (a whole number)"]
        elif job_id in first_at:
            errors[str(index)] = [f"job {job_id} is listed already (item {first_at[job_id]})"]
        elif job_id not in found:  # someone else's job is as absent as one that never existed
            errors[str(index)] = ["No job matches the given query."]
        elif found[job_id].status == Job.Status.ARCHIVED:
            errors[str(index)] = [f"job {job_id} is archived; it cannot run"]
        else:
            first_at[job_id] = index
    if errors:
        raise ValidationError(errors)
    # Running a shell job needs jobs.run_shell now, not only when it was created (a permission taken away).
    _shell_check(
        actor, [({"kind": found[job_id].kind, "payload": found[job_id].payload}, None) for job_id in jobs]
    )
    executions = _trigger_all([found[job_id] for job_id in jobs])
    logger.info("%d jobs triggered by %s", len(executions), actor)
    return executions


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _trigger_all(jobs: list[Job]) -> list[Execution]:
    """Run the (locked, checked) jobs now, as job_trigger does, in one batch: one insert for all their
    executions, one placement pass, one `jobs.execute` each after commit."""
    return executions_start(jobs=jobs)


def _size_check(items: Any) -> None:
    limit = settings.SCHEDULER_BULK_MAX_ITEMS
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise ValidationError("must be a list")
    if not 1 <= len(items) <= limit:
        raise ValidationError(f"must hold 1 to {limit} items, not {len(items)}")


def _items_clean(
    items: Sequence[Any], *, skip_none: bool = False
) -> tuple[list[Cleaned], dict[str, list[str]]]:
    """Each item cleaned by job_input_clean; errors keyed "<index>.<field>" (bare index: not an object)."""
    _size_check(items)
    placement = placement_check_memo()  # one placement question per distinct (cpu, memory, selector)
    cleaned: list[Cleaned] = []
    errors: dict[str, list[str]] = {}
    for index, item in enumerate(items):
        if item is None and skip_none:
            continue
        try:
            cleaned.append(_item_clean(item, placement))
        except ValidationError as exc:
            errors.update(_keyed(index, exc))
    return cleaned, errors


def _keyed(index: int, exc: ValidationError) -> dict[str, list[str]]:
    """An item's errors under "<index>.<field>", or "<index>" for errors about the item as a whole."""
    if not hasattr(exc, "error_dict"):
        return {str(index): exc.messages}
    return {
        f"{index}.{field}" if field != NON_FIELD_ERRORS else str(index): messages
        for field, messages in exc.message_dict.items()
    }


def _item_clean(item: Any, placement: PlacementCheck) -> Cleaned:
    if not isinstance(item, Mapping):
        raise ValidationError("must be a JSON object with the fields of one job")
    problems = {name: ["is not a job field"] for name in sorted(set(item) - ITEM_FIELDS)}
    problems.update({name: ["is required"] for name in REQUIRED if name not in item})
    if problems:
        raise ValidationError(problems)
    return job_input_clean(item, schedule=item.get("schedule"), placement=placement)


def _shell_check(owner: Any, cleaned: list[Cleaned]) -> None:
    """shell_permission_check for each item; a refusal names every item it applies to."""
    denied: list[str] = []
    message = ""
    for index, (fields, _) in enumerate(cleaned):
        try:
            shell_permission_check(user=owner, kind=fields["kind"], payload=fields.get("payload"))
        except PermissionDenied as exc:
            denied.append(f"{index}.kind")
            message = str(exc)
    if denied:
        raise ItemsPermissionDenied(message, denied)


def _item_key(key: str, index: int) -> str:
    """The stored key of item `index` of the batch sent with Idempotency-Key `key` (hashed: 255 fits)."""
    return f"{_batch_prefix(key)}{index}"


def _batch_prefix(key: str) -> str:
    return f"bulk:{hashlib.sha256(key.encode()).hexdigest()[:40]}:"


def _batch_of(owner: Any, key: str) -> list[Job]:
    """The jobs an earlier batch with this key created, in item order ([] if none)."""
    if not Job.objects.filter(owner=owner, idempotency_key=_item_key(key, 0)).exists():
        return []
    jobs = list(Job.objects.filter(owner=owner, idempotency_key__startswith=_batch_prefix(key)))
    return sorted(jobs, key=lambda job: int(job.idempotency_key.rsplit(":", 1)[1]))


def _jobs_write(owner: Any, cleaned: list[Cleaned], key: str) -> list[Job]:
    """Insert the jobs, their schedules and PeriodicTasks: one statement per table (job_create's rows)."""
    jobs = Job.objects.bulk_create(
        Job(owner=owner, **{**fields, "idempotency_key": _item_key(key, index) if key else ""})
        for index, (fields, _) in enumerate(cleaned)
    )
    now = timezone.now()
    schedules: list[JobSchedule] = []
    for job, (_, spec) in zip(jobs, cleaned, strict=True):
        if spec is not None:
            schedule = JobSchedule(job=job, **spec.fields())
            schedule.next_run_at = schedule_next_run(schedule, after=now)
            schedules.append(schedule)
    names = [f"job:{job.pk}" for job in jobs]
    # job_create replaces a stale PeriodicTask named after a new job (only a reused id can leave one).
    stale, _ = PeriodicTask.objects.filter(name__in=names).delete()
    tasks = PeriodicTask.objects.bulk_create(
        _periodic_task(schedule, beat)
        for schedule, beat in zip(schedules, beat_schedule_fields_bulk(schedules), strict=True)
    )
    for schedule, task in zip(schedules, tasks, strict=True):
        schedule.periodic_task = task
    JobSchedule.objects.bulk_create(schedules)
    if tasks or stale:
        PeriodicTasks.update_changed()  # what each PeriodicTask.save() does: beat reloads the changed rows
    by_job = {schedule.job_id: schedule for schedule in schedules}
    reverse: Any = Job._meta.get_field("schedule")  # the one-to-one's reverse side caches job.schedule
    for job in jobs:  # job.schedule answers from memory (None: raises DoesNotExist), no query per job
        reverse.set_cached_value(job, by_job.get(job.pk))
    return jobs


def _periodic_task(schedule: JobSchedule, beat_fields: dict[str, Any]) -> PeriodicTask:
    """The PeriodicTask periodic_task_sync saves for a new job, as PeriodicTask.save() would store it."""
    job = schedule.job
    task = PeriodicTask(
        name=f"job:{job.pk}", **beat_fields, **periodic_task_values(job=job, schedule=schedule)
    )
    # PeriodicTask.save() normalises these before writing; bulk_create does not call it.
    task.exchange = task.exchange or None
    task.routing_key = task.routing_key or None
    task.queue = task.queue or None
    task.headers = task.headers or None
    if not task.enabled:
        task.last_run_at = None
    return task
