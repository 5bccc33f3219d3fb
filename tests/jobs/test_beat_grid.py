"""Beat fires interval jobs on the very grid the jobs core shows as next_run_at."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.beat.entries import ROW_FIELDS, entry_from_row
from jobs.beat.slots import slot_due, slot_next
from jobs.models import JobSchedule
from jobs.services import job_create, job_update
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _beat_entry(job_id: int):
    row = PeriodicTask.objects.filter(name=f"job:{job_id}").values(*ROW_FIELDS).get()
    entry = entry_from_row(row)
    assert entry is not None
    return entry


def test_interval_job_without_start_fires_on_its_next_run_at_grid_even_after_edits():
    job = job_create(
        owner=UserFactory(),
        name="every-7",
        kind="python",
        payload={"handler": "echo"},
        schedule={"type": "interval", "every_seconds": 7},
    )
    schedule = JobSchedule.objects.get(job=job)
    now = timezone.now()
    entry = _beat_entry(job.pk)
    # Nothing is due at creation: the first slot is the one the admin and the API show.
    assert slot_due(entry.slots, last=None, now=now) is None
    assert slot_next(entry.slots, last=None, now=now) == schedule.next_run_at

    # An edit that keeps the interval must not move beat's grid (date_changed moves, the slots do not).
    with time_machine.travel(now + timedelta(seconds=3), tick=False):
        job_update(job=job, description="edited")
        moved = _beat_entry(job.pk)
        later = timezone.now()
        assert slot_next(moved.slots, last=None, now=later) == schedule.next_run_at
