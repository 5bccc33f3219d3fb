"""jobs_create_bulk writes exactly the rows job_create writes: jobs, schedules, beat entries."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connection
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)

from jobs.models import Job, JobSchedule
from jobs.services import ItemsPermissionDenied, job_create, jobs_create_bulk
from tests.factories import NodeFactory, UserFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 27, 18, 0, 0, 123456, tzinfo=UTC)
SPECS: list[dict[str, Any]] = [
    {"name": "plain", "kind": "python", "payload": {"handler": "echo"}},
    {
        "name": "every minute",
        "kind": "python",
        "payload": {"handler": "echo", "kwargs": {"message": "hi"}},
        "schedule": {"type": "interval", "every_seconds": 60},
        "priority": 9,
        "cpu": Decimal("0.5"),
        "memory_mb": 256,
        "node_selector": {"region": "eu"},
        "timeout_seconds": 600,
        "max_retries": 3,
        "retry_backoff_seconds": 5,
        "retry_backoff_max_seconds": 50,
        "retry_jitter": False,
        "concurrency_policy": "forbid",
        "misfire_policy": "skip",
        "description": "with every field",
    },
    {
        "name": "every 90 s from a start, until an end",
        "kind": "python",
        "payload": {"handler": "echo"},
        "schedule": {
            "type": "interval",
            "every_seconds": 90,
            "start_at": "2026-11-28T00:00:00Z",
            "end_at": "2026-12-28T00:00:00Z",
            "max_runs": 10,
        },
    },
    {
        "name": "cron in Paris",
        "kind": "python",
        "payload": {"handler": "echo"},
        "schedule": {"type": "cron", "cron_expression": "30 2 * * 1-5", "timezone": "Europe/Paris"},
    },
    {
        "name": "cron in Paris too",
        "kind": "python",
        "payload": {"handler": "echo"},
        "schedule": {"type": "cron", "cron_expression": "30 2 * * 1-5", "timezone": "Europe/Paris"},
    },
    {
        "name": "once",
        "kind": "python",
        "payload": {"handler": "echo"},
        "schedule": {"type": "once", "run_at": "2026-12-01T09:00:00"},
    },
    {
        "name": "http",
        "kind": "http",
        "payload": {"method": "POST", "url": "https://example.com/hook", "body": "x"},
        "schedule": {"type": "cron", "cron_expression": "0 6 * * *"},
    },
    {
        "name": "cron that never fires in its window",
        "kind": "python",
        "payload": {"handler": "echo"},
        "schedule": {
            "type": "cron",
            "cron_expression": "0 3 1 1 *",
            "start_at": "2026-12-01T00:00:00Z",
            "end_at": "2026-12-02T00:00:00Z",
        },
    },
]


@pytest.fixture(autouse=True)
def _frozen_clock() -> Iterator[None]:
    """SPECS' dates are after NOW; and frozen, both paths compute the same next runs and grid."""
    with time_machine.travel(NOW, tick=False):
        yield


def _rows(jobs: list[Job]) -> list[dict[str, Any]]:
    """Every stored field of each job, its schedule and its PeriodicTask, ids replaced by a placeholder."""
    rows = []
    for job in Job.objects.filter(pk__in=[j.pk for j in jobs]).order_by("pk"):
        job_row = model_to_dict(job, exclude=["id"])
        job_row.update(created_at=job.created_at, updated_at=job.updated_at)
        schedule = JobSchedule.objects.filter(job=job).first()
        schedule_row = task_row = None
        if schedule is not None:
            schedule_row = model_to_dict(schedule, exclude=["id", "job", "periodic_task"])
            task = schedule.periodic_task
            assert task is not None
            task_row = {
                field.name: getattr(task, field.attname)
                for field in PeriodicTask._meta.concrete_fields
                if field.name != "id"
            }
            assert task_row.pop("name") == f"job:{job.pk}"
            assert json.loads(task_row.pop("kwargs")) == {"job_id": job.pk}
        assert not PeriodicTask.objects.filter(name=f"job:{job.pk}").exclude(job_schedule=schedule).exists()
        rows.append({"job": job_row, "schedule": schedule_row, "task": task_row})
    return rows


def test_bulk_rows_equal_single_rows_field_by_field():
    NodeFactory(labels={"region": "eu"})
    owner = UserFactory()
    bulk = jobs_create_bulk(owner=owner, items=SPECS).jobs
    beat_rows = (
        IntervalSchedule.objects.count(),
        CrontabSchedule.objects.count(),
        ClockedSchedule.objects.count(),
    )
    single = [job_create(owner=owner, **spec) for spec in SPECS]
    # The single path found every beat schedule row the batch made, once per distinct value.
    assert beat_rows == (2, 3, 1)
    assert (
        IntervalSchedule.objects.count(),
        CrontabSchedule.objects.count(),
        ClockedSchedule.objects.count(),
    ) == beat_rows
    bulk_rows, single_rows = _rows(bulk), _rows(single)
    assert [row["job"]["name"] for row in bulk_rows] == [spec["name"] for spec in SPECS]
    for spec, got, expected in zip(SPECS, bulk_rows, single_rows, strict=True):
        assert got == expected, spec["name"]
    # The rows are worth comparing: the grid, the next runs and the disabled entry are really there.
    every_minute, never = bulk_rows[1], bulk_rows[7]
    assert every_minute["task"]["start_time"] == NOW.replace(microsecond=0) + timedelta(seconds=60)
    assert every_minute["schedule"]["next_run_at"] == NOW.replace(microsecond=0) + timedelta(seconds=60)
    assert never["schedule"]["next_run_at"] is None
    assert never["task"]["enabled"] is False
    assert bulk_rows[5]["task"]["one_off"] is True


def test_beat_is_told_once_that_schedules_changed():
    owner = UserFactory()
    jobs_create_bulk(owner=owner, items=SPECS[:1])  # no schedule: nothing for beat
    assert PeriodicTasks.last_change() is None
    jobs_create_bulk(owner=owner, items=SPECS)
    assert PeriodicTasks.last_change() is not None


def test_bulk_errors_are_keyed_by_index_and_nothing_is_written():
    owner = UserFactory()
    items: list[Any] = [
        SPECS[0],
        {**SPECS[0], "payload": {"handler": "nope"}},
        {"kind": "python", "payload": {"handler": "echo"}, "colour": "red"},
        "not an object",
        {**SPECS[1], "schedule": {"type": "interval", "every_seconds": 0}},
    ]
    with pytest.raises(ValidationError) as caught:
        jobs_create_bulk(owner=owner, items=items)
    assert set(caught.value.message_dict) == {
        "1.payload.handler",
        "2.name",
        "2.colour",
        "3",
        "4.schedule.every_seconds",
    }
    assert Job.objects.count() == 0
    assert not PeriodicTask.objects.filter(name__startswith="job:").exists()


@pytest.mark.parametrize("count", [0, 4])
def test_the_batch_size_is_bounded(settings, count):
    settings.SCHEDULER_BULK_MAX_ITEMS = 3
    with pytest.raises(ValidationError, match="must hold 1 to 3 items"):
        jobs_create_bulk(owner=UserFactory(), items=[SPECS[0]] * count)


def test_shell_items_are_refused_without_the_permission():
    shell = {"name": "sh", "kind": "shell", "payload": {"command": ["true"]}}
    with pytest.raises(ItemsPermissionDenied) as caught:
        jobs_create_bulk(owner=UserFactory(), items=[SPECS[0], shell])
    assert caught.value.fields == ["1.kind"]
    assert Job.objects.count() == 0


def test_queries_do_not_grow_with_the_batch():
    """One statement per table and one placement question per distinct resources, whatever the size."""
    NodeFactory(labels={"region": "eu"})
    owner = UserFactory()
    jobs_create_bulk(owner=owner, items=SPECS[1:6])  # the beat schedule rows exist from now on
    counts = []
    for size in (2, 40):
        items = [SPECS[1] | {"name": f"job {i}"} for i in range(size)] + SPECS[3:6]
        with CaptureQueriesContext(connection) as queries:
            jobs_create_bulk(owner=owner, items=items)
        counts.append(len(queries))
    assert counts[0] == counts[1], counts
