"""Schedules: our spec (once, interval, cron in a zone), its next runs, and django-celery-beat models."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import reduce
from operator import or_
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab
from croniter import croniter
from django.db import connection
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from .models import Job, JobSchedule

SCHEDULE_KEYS = {
    "type",
    "run_at",
    "every_seconds",
    "cron_expression",
    "timezone",
    "start_at",
    "end_at",
    "max_runs",
}
MAX_CRON_SCAN = 100_000  # croniter steps before a cron expression is deemed to never fire again
DST_LOOKAHEAD = timedelta(hours=3)  # wider than any DST shift: gap-shifted times can reorder within it


@dataclass(frozen=True)
class ScheduleSpec:
    """A validated schedule, as submitted (None schedule = run only when triggered)."""

    type: str
    run_at: datetime | None = None
    every_seconds: int | None = None
    cron_expression: str = ""
    timezone: str = "UTC"
    start_at: datetime | None = None
    end_at: datetime | None = None
    max_runs: int | None = None

    def fields(self) -> dict[str, Any]:
        """JobSchedule field values."""
        return {name: getattr(self, name) for name in SCHEDULE_KEYS}

    @classmethod
    def from_model(cls, schedule: JobSchedule) -> ScheduleSpec:
        return cls(**{name: getattr(schedule, name) for name in SCHEDULE_KEYS})


# --- validation -------------------------------------------------------------------------------


def _datetime(value: Any, tz: ZoneInfo) -> datetime:
    """An aware datetime from a datetime or ISO-8601 string; naive values are in the schedule's zone."""
    parsed = (
        value if isinstance(value, datetime) else parse_datetime(value) if isinstance(value, str) else None
    )
    if parsed is None:
        raise ValueError("must be an ISO-8601 date and time")
    aware = parsed.replace(tzinfo=tz) if timezone.is_naive(parsed) else parsed
    # PostgreSQL stores UTC: refuse here what it would refuse (years past 9999 once in UTC).
    try:
        return aware.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of the supported range of dates") from None


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a positive whole number")
    number = int(value)
    if number < 1:
        raise ValueError("must be a positive whole number")
    return number


def cron_error(expression: str) -> str | None:
    """Why a cron expression is refused (5 fields, valid for croniter and celery), or None."""
    fields = expression.split()
    if len(fields) != 5:
        return f"must have 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
    if not croniter.is_valid(expression):
        return f"{expression!r} is not a valid cron expression"
    minute, hour, dom, month, dow = fields
    try:
        crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)
    except (ValueError, IndexError) as exc:
        return f"{expression!r} is not accepted by celery beat: {exc}"
    return None


def schedule_spec_parse(
    data: Mapping[str, Any] | None, *, now: datetime | None = None
) -> ScheduleSpec | None:
    """Validate schedule input; raise ValueError-free: returns the spec or raises ScheduleInvalid."""
    if data is None or data == {} or (isinstance(data, Mapping) and data.get("type") in (None, "", "none")):
        return None
    if not isinstance(data, Mapping):
        raise ScheduleInvalid({"schedule": "must be an object with a 'type'"})
    now = now or timezone.now()
    errors: dict[str, str] = {}
    unknown = set(data) - SCHEDULE_KEYS
    if unknown:
        errors["schedule"] = f"unknown keys: {', '.join(sorted(unknown))}"
    kind = data.get("type")
    if kind not in JobSchedule.Type.values:
        errors["schedule.type"] = f"must be one of none, {', '.join(JobSchedule.Type.values)}"
    tz_name = data.get("timezone") or "UTC"
    try:
        tz = ZoneInfo(str(tz_name))
    except (ZoneInfoNotFoundError, ValueError):
        errors["schedule.timezone"] = f"{tz_name!r} is not an IANA time zone"
        tz = ZoneInfo("UTC")
    values: dict[str, Any] = {"type": kind, "timezone": str(tz_name)}
    for name in ("run_at", "start_at", "end_at"):
        if data.get(name) not in (None, ""):
            try:
                values[name] = _datetime(data[name], tz)
            except ValueError as exc:
                errors[f"schedule.{name}"] = str(exc)
    for name in ("every_seconds", "max_runs"):
        if data.get(name) not in (None, ""):
            try:
                values[name] = _positive_int(data[name])
            except ValueError as exc:
                errors[f"schedule.{name}"] = str(exc)
    if kind == JobSchedule.Type.ONCE:
        if "run_at" not in values and "schedule.run_at" not in errors:
            errors["schedule.run_at"] = "is required for a once schedule"
        elif "run_at" in values and values["run_at"] <= now:
            errors["schedule.run_at"] = "is in the past"
    elif kind == JobSchedule.Type.INTERVAL:
        if "every_seconds" not in values and "schedule.every_seconds" not in errors:
            errors["schedule.every_seconds"] = "is required for an interval schedule (a positive number)"
    elif kind == JobSchedule.Type.CRON:
        expression = " ".join(str(data.get("cron_expression") or "").split())
        error = cron_error(expression) if expression else "is required for a cron schedule"
        if error:
            errors["schedule.cron_expression"] = error
        values["cron_expression"] = expression
    start, end = values.get("start_at"), values.get("end_at")
    if end is not None and start is not None and end <= start:
        errors["schedule.end_at"] = "must be after start_at"
    elif end is not None and end <= now:
        errors["schedule.end_at"] = "is in the past"
    if errors:
        raise ScheduleInvalid(errors)
    return ScheduleSpec(**values)


class ScheduleInvalid(Exception):
    """Schedule input errors, keyed by field."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(errors)
        self.errors = errors


# --- next runs --------------------------------------------------------------------------------


def _localize(naive: datetime, tz: ZoneInfo) -> datetime:
    # fold=0: an ambiguous wall time (DST ends) is its first occurrence; a wall time that does not
    # exist (DST starts) maps to the same instant shifted forward by the gap (02:30 -> 03:30 CEST).
    return naive.replace(tzinfo=tz, fold=0).astimezone(UTC)


def cron_next(expression: str, tz_name: str, after: datetime) -> datetime | None:
    """The first instant strictly after `after` whose wall time in the zone matches the expression."""
    tz = ZoneInfo(tz_name)
    start = after.astimezone(tz).replace(tzinfo=None) - DST_LOOKAHEAD
    it = croniter(expression, start)
    best: datetime | None = None
    horizon: datetime | None = None
    for _ in range(MAX_CRON_SCAN):
        naive = it.get_next(datetime)
        if horizon is not None and naive > horizon:
            break
        candidate = _localize(naive, tz)
        if candidate > after and (best is None or candidate < best):
            best = candidate
            horizon = horizon or naive + DST_LOOKAHEAD
    return best


def cron_previous(expression: str, tz_name: str, at: datetime) -> datetime | None:
    """The latest instant at or before `at` whose wall time matches (the slot a late firing serves)."""
    tz = ZoneInfo(tz_name)
    it = croniter(expression, at.astimezone(tz).replace(tzinfo=None) + DST_LOOKAHEAD)
    best: datetime | None = None
    horizon: datetime | None = None
    for _ in range(MAX_CRON_SCAN):
        naive = it.get_prev(datetime)
        if horizon is not None and naive < horizon:
            break
        candidate = _localize(naive, tz)
        if candidate <= at and (best is None or candidate > best):
            best = candidate
            horizon = horizon or naive - DST_LOOKAHEAD
    return best


def interval_anchor(schedule: JobSchedule | ScheduleSpec, created_at: datetime) -> datetime:
    """Interval slots are start_at + k*every (or the job's creation second when there is no start)."""
    return schedule.start_at or created_at.replace(microsecond=0)


def spec_next_run(spec: ScheduleSpec, *, after: datetime, anchor: datetime) -> datetime | None:
    """The first slot strictly after `after`, ignoring max_runs (applied by the caller)."""
    nxt: datetime | None
    if spec.type == JobSchedule.Type.ONCE:
        nxt = spec.run_at if spec.run_at and spec.run_at > after else None
    elif spec.type == JobSchedule.Type.INTERVAL:
        every = timedelta(seconds=spec.every_seconds or 1)
        nxt = anchor if after < anchor else anchor + every * ((after - anchor) // every + 1)
    else:
        floor = max(after, spec.start_at - timedelta(microseconds=1)) if spec.start_at else after
        nxt = cron_next(spec.cron_expression, spec.timezone, floor)
    if nxt is not None and spec.start_at and nxt < spec.start_at:
        nxt = None
    if nxt is not None and spec.end_at and nxt > spec.end_at:
        return None
    return nxt


def schedule_next_run(schedule: JobSchedule, *, after: datetime) -> datetime | None:
    """The job's next slot after `after`, or None when its schedule is exhausted."""
    if schedule.max_runs is not None and schedule.total_runs >= schedule.max_runs:
        return None
    anchor = interval_anchor(schedule, schedule.job.created_at)
    return spec_next_run(ScheduleSpec.from_model(schedule), after=after, anchor=anchor)


def schedule_slot_at(schedule: JobSchedule, *, at: datetime) -> datetime:
    """The slot a firing at `at` serves when beat did not say (the stock scheduler): the latest due one."""
    if schedule.type == JobSchedule.Type.ONCE and schedule.run_at:
        return schedule.run_at
    if schedule.type == JobSchedule.Type.INTERVAL and schedule.every_seconds:
        anchor = interval_anchor(schedule, schedule.job.created_at)
        every = timedelta(seconds=schedule.every_seconds)
        # Beat may fire a hair early or late; round to the nearest slot within a quarter interval.
        return anchor + every * max(0, round((at - anchor) / every - 0.25))
    if schedule.type == JobSchedule.Type.CRON:
        previous = cron_previous(schedule.cron_expression, schedule.timezone, at + timedelta(seconds=1))
        if previous is not None:
            return previous
    return at.replace(microsecond=0)


# --- django-celery-beat -----------------------------------------------------------------------


BeatModel = type[ClockedSchedule] | type[IntervalSchedule] | type[CrontabSchedule]
# Each model's unique index (migration jobs 0008): jobs with equal schedules share one row. Rows are
# written in this model order and sorted by value, so concurrent batches waiting on each other's new
# rows wait in one order, never in a cycle (a deadlock).
BEAT_UNIQUE_FIELDS: dict[BeatModel, tuple[str, ...]] = {
    ClockedSchedule: ("clocked_time",),
    IntervalSchedule: ("every", "period"),
    CrontabSchedule: ("minute", "hour", "day_of_week", "day_of_month", "month_of_year", "timezone"),
}


def _beat_schedule_lookup(schedule: JobSchedule) -> tuple[str, BeatModel, dict[str, Any]]:
    """The PeriodicTask field, the django-celery-beat schedule model and the values of its row."""
    if schedule.type == JobSchedule.Type.ONCE:
        return "clocked", ClockedSchedule, {"clocked_time": schedule.run_at}
    if schedule.type == JobSchedule.Type.INTERVAL:
        return (
            "interval",
            IntervalSchedule,
            {"every": schedule.every_seconds, "period": IntervalSchedule.SECONDS},
        )
    minute, hour, dom, month, dow = schedule.cron_expression.split()
    return (
        "crontab",
        CrontabSchedule,
        {
            "minute": minute,
            "hour": hour,
            "day_of_month": dom,
            "month_of_year": month,
            "day_of_week": dow,
            "timezone": ZoneInfo(schedule.timezone),
        },
    )


def _beat_fields(field: str, row: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "interval": None,
        "crontab": None,
        "clocked": None,
        "one_off": field == "clocked",
    }
    fields[field] = row
    return fields


def _beat_row_key(model: BeatModel, values: Mapping[str, Any]) -> tuple[Any, ...]:
    # Zones compare by name (the column holds the name): a row read back holds an equal zone object.
    return tuple(
        str(values[name]) if isinstance(values[name], ZoneInfo) else values[name]
        for name in BEAT_UNIQUE_FIELDS[model]
    )


def _beat_rows_read(model: BeatModel, wanted: Mapping[tuple[Any, ...], Mapping[str, Any]]) -> dict[Any, Any]:
    rows = model.objects.filter(reduce(or_, (Q(**values) for values in wanted.values())))
    names = BEAT_UNIQUE_FIELDS[model]
    return {_beat_row_key(model, {name: getattr(row, name) for name in names}): row for row in rows}


def _beat_rows_insert(model: BeatModel, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING (pk, *unique columns): the rows this statement added."""
    fields: list[Any] = [model._meta.get_field(name) for name in BEAT_UNIQUE_FIELDS[model]]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    values = ", ".join([f"({', '.join(['%s'] * len(fields))})"] * len(rows))
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES {values} "  # noqa: S608 - names from _meta
        f"ON CONFLICT ({columns}) DO NOTHING RETURNING {quote(model._meta.pk.column)}, {columns}"
    )
    params = [field.get_db_prep_save(row[field.name], connection) for row in rows for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _beat_rows(model: BeatModel, wanted: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, ...], Any]:
    """The model's rows holding these values, by key: read, else inserted, else (a lost race) read again."""
    by_key = {_beat_row_key(model, values): values for values in wanted}
    rows = _beat_rows_read(model, by_key)
    missing = sorted(key for key in by_key if key not in rows)
    if missing:
        for pk, *stored in _beat_rows_insert(model, [by_key[key] for key in missing]):
            key = _beat_row_key(model, dict(zip(BEAT_UNIQUE_FIELDS[model], stored, strict=True)))
            rows[key] = model(pk=pk, **by_key[key])
        # A row skipped by ON CONFLICT is a concurrent insert that PostgreSQL waited for until it committed:
        # the next statement (read committed) sees it.
        lost = {key: by_key[key] for key in missing if key not in rows}
        if lost:
            rows.update(_beat_rows_read(model, lost))
    return rows


def beat_schedule_fields_bulk(schedules: Sequence[JobSchedule]) -> list[dict[str, Any]]:
    """The PeriodicTask schedule fields of each schedule; at most three queries per schedule model."""
    lookups = [_beat_schedule_lookup(schedule) for schedule in schedules]
    rows: dict[BeatModel, dict[tuple[Any, ...], Any]] = {}
    for model in BEAT_UNIQUE_FIELDS:  # in this order: see BEAT_UNIQUE_FIELDS
        wanted = [values for _, m, values in lookups if m is model]
        if wanted:
            rows[model] = _beat_rows(model, wanted)
    return [
        _beat_fields(field, rows[model][_beat_row_key(model, values)]) for field, model, values in lookups
    ]


def periodic_task_values(*, job: Job, schedule: JobSchedule) -> dict[str, Any]:
    """What the job's PeriodicTask holds besides its schedule row: task, kwargs, grid, expiry, enabled."""
    start_time: datetime | None = schedule.start_at
    if schedule.type == JobSchedule.Type.INTERVAL and schedule.start_at is None:
        # Beat's grid must be the one next_run_at uses: first slot one interval after the creation second.
        every = timedelta(seconds=schedule.every_seconds or 1)
        start_time = interval_anchor(schedule, job.created_at) + every
    return {
        "task": "jobs.fire",
        "kwargs": json.dumps({"job_id": job.pk}),
        "start_time": start_time,
        "expires": schedule.end_at,
        "description": f"{job.name} ({schedule})"[:2000],
        "enabled": job.status == Job.Status.ACTIVE and schedule.next_run_at is not None,
    }


def periodic_task_sync(*, job: Job) -> PeriodicTask | None:
    """Make the job's PeriodicTask match its schedule and status (create, update or disable it)."""
    schedule: JobSchedule | None = JobSchedule.objects.filter(job=job).select_related("periodic_task").first()
    name = f"job:{job.pk}"
    if schedule is None:
        # No schedule (run only when triggered): no periodic task either.
        PeriodicTask.objects.filter(name=name).delete()
        return None
    task = schedule.periodic_task or PeriodicTask.objects.filter(name=name).first() or PeriodicTask(name=name)
    values = {**beat_schedule_fields_bulk([schedule])[0], **periodic_task_values(job=job, schedule=schedule)}
    for field, value in values.items():
        setattr(task, field, value)
    task.save()  # save() (not update()) bumps date_changed and PeriodicTasks: beat reloads just this one
    if schedule.periodic_task_id != task.pk:
        schedule.periodic_task = task
        schedule.save(update_fields=["periodic_task"])
    return task


def periodic_task_disable(*, job: Job) -> None:
    """Disable the job's PeriodicTask (pause, completion, archive)."""
    for task in PeriodicTask.objects.filter(name=f"job:{job.pk}", enabled=True):
        task.enabled = False
        task.save()
