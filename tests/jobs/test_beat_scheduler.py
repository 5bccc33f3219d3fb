"""JobScheduler in-process against the real database and Redis: heap, change detection, bookkeeping."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import ClockedSchedule, IntervalSchedule, PeriodicTask

from jobs.beat import JobScheduler, leader_status
from jobs.beat.entries import BeatEntry
from jobs.beat.lease import LEASE_KEY, LeaderLease
from scheduler_project.celery import app

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


class RecordingScheduler(JobScheduler):
    """Publishes for real and remembers what it sent, so tests can read (name, slot, kwargs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sent: list[tuple[str, datetime, dict[str, Any]]] = []
        super().__init__(*args, **kwargs)
        self.sync_seconds = self.flush_seconds = 0.0  # look and write on every tick

    def send_entry(self, entry: BeatEntry, slot: datetime) -> Any:
        result = super().send_entry(entry, slot)
        self.sent.append((entry.name, slot, {}))
        return result

    def fire_slots(self, batch: list[tuple[BeatEntry, datetime]]) -> list[int]:
        ids = super().fire_slots(
            batch
        )  # for real: job 7 of these tests does not exist, so nothing is created
        for entry, slot in batch:
            self.sent.append((entry.name, slot, {**entry.kwargs, "scheduled_for": slot.isoformat()}))
        return ids


@pytest.fixture
def beat_schedule() -> Iterator[dict[str, Any]]:
    """settings.CELERY_BEAT_SCHEDULE for the test (empty: other apps' sweeps stay out of the way)."""
    saved = app.conf.beat_schedule
    app.conf.beat_schedule = {}
    yield app.conf.beat_schedule
    app.conf.beat_schedule = saved


@pytest.fixture
def make_scheduler(redis_client, beat_schedule) -> Iterator[Any]:
    redis_client.delete(LEASE_KEY)
    made: list[JobScheduler] = []

    def make() -> RecordingScheduler:
        scheduler = RecordingScheduler(app=app)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.lease.release()


def every(seconds: int) -> IntervalSchedule:
    return IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)[0]


def fire_task(name: str, *, seconds: int = 10, start: datetime = T0, **fields: Any) -> PeriodicTask:
    return PeriodicTask.objects.create(
        name=name,
        task="jobs.fire",
        interval=every(seconds),
        kwargs=json.dumps({"job_id": 7}),
        start_time=start,
        **fields,
    )


def run(scheduler: JobScheduler, at: datetime, ticks: int = 3) -> None:
    with time_machine.travel(at, tick=False):
        for _ in range(ticks):
            scheduler.tick()


@pytest.mark.django_db(transaction=True)
def test_due_entry_is_sent_once_per_slot_with_scheduled_for(make_scheduler) -> None:
    with time_machine.travel(T0 - timedelta(hours=1), tick=False):
        fire_task("job:7")
    scheduler = make_scheduler()
    run(scheduler, T0 + timedelta(seconds=1))
    run(scheduler, T0 + timedelta(seconds=9))
    run(scheduler, T0 + timedelta(seconds=10))
    assert [(name, slot) for name, slot, _ in scheduler.sent] == [
        ("job:7", T0),
        ("job:7", T0 + timedelta(seconds=10)),
    ]
    assert scheduler.sent[0][2] == {"job_id": 7, "scheduled_for": "2030-01-01T12:00:00+00:00"}


@pytest.mark.django_db(transaction=True)
def test_after_downtime_missed_slots_are_sent_once_as_the_latest(make_scheduler) -> None:
    with time_machine.travel(T0 - timedelta(hours=1), tick=False):
        fire_task("job:7", last_run_at=T0)
    scheduler = make_scheduler()
    run(scheduler, T0 + timedelta(minutes=30, seconds=4))
    assert [slot for _, slot, _ in scheduler.sent] == [T0 + timedelta(minutes=30)]


@pytest.mark.django_db(transaction=True)
def test_bookkeeping_is_written_in_one_statement_per_batch(make_scheduler) -> None:
    with time_machine.travel(T0 - timedelta(hours=1), tick=False):
        for i in range(50):
            fire_task(f"job:{i}")
    scheduler = make_scheduler()
    scheduler.flush_seconds = 3600.0
    run(scheduler, T0 + timedelta(seconds=1))
    assert len(scheduler.sent) == 50
    assert set(PeriodicTask.objects.values_list("total_run_count", flat=True)) == {0}
    with CaptureQueriesContext(connection) as queries:
        scheduler.sync()
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1
    assert set(PeriodicTask.objects.values_list("last_run_at", "total_run_count")) == {(T0, 1)}


@pytest.mark.django_db(transaction=True)
def test_one_off_clocked_task_fires_once_then_is_disabled(make_scheduler) -> None:
    with time_machine.travel(T0 - timedelta(hours=1), tick=False):
        clocked = ClockedSchedule.objects.create(clocked_time=T0 + timedelta(seconds=5))
        PeriodicTask.objects.create(
            name="once", task="jobs.fire", clocked=clocked, one_off=True, kwargs='{"job_id": 1}'
        )
    scheduler = make_scheduler()
    run(scheduler, T0)
    run(scheduler, T0 + timedelta(seconds=6))
    run(scheduler, T0 + timedelta(seconds=60))
    assert [slot for _, slot, _ in scheduler.sent] == [T0 + timedelta(seconds=5)]
    task = PeriodicTask.objects.get(name="once")
    assert (task.enabled, task.total_run_count) == (False, 1)


@pytest.mark.django_db(transaction=True)
def test_editing_one_schedule_among_10000_reloads_only_that_one(make_scheduler) -> None:
    interval = every(600)
    PeriodicTask.objects.bulk_create(
        PeriodicTask(name=f"job:{i}", task="jobs.fire", interval=interval, kwargs=json.dumps({"job_id": i}),
                     start_time=T0 + timedelta(milliseconds=60 * i))
        for i in range(10_000)
    )  # fmt: skip
    # Existing schedules were last edited long ago.
    PeriodicTask.objects.update(date_changed=T0 - timedelta(days=1))
    scheduler = make_scheduler()
    run(scheduler, T0 - timedelta(seconds=30), ticks=1)
    assert scheduler.stats["rows_loaded"] == 10_000
    assert len(scheduler._entries) == 10_000

    with time_machine.travel(T0 - timedelta(seconds=29), tick=False):
        edited = PeriodicTask.objects.get(name="job:5000")
        edited.interval = every(5)
        edited.start_time = T0 - timedelta(seconds=28)
        edited.save()
    with CaptureQueriesContext(connection) as queries:
        run(scheduler, T0 - timedelta(seconds=20), ticks=1)
    assert scheduler.stats["rows_loaded"] == 10_001
    assert len(queries.captured_queries) <= 15  # + the firing transaction (begin, insert, commit)
    assert [(name, slot) for name, slot, _ in scheduler.sent] == [("job:5000", T0 - timedelta(seconds=23))]

    # A deletion (no date_changed to see) is noticed without reloading the others either.
    PeriodicTask.objects.filter(name="job:1").delete()
    PeriodicTask.objects.filter(name="job:2").update(enabled=False)
    run(scheduler, T0 - timedelta(seconds=19), ticks=1)
    assert scheduler.stats["rows_loaded"] == 10_001
    assert len(scheduler._entries) == 9_998


@pytest.mark.django_db(transaction=True)
def test_an_edited_shared_interval_row_reloads_its_tasks(make_scheduler) -> None:
    with time_machine.travel(T0 - timedelta(hours=1), tick=False):
        fire_task("a", seconds=10)
        fire_task("b", seconds=30)
    scheduler = make_scheduler()
    run(scheduler, T0 - timedelta(seconds=1), ticks=1)
    IntervalSchedule.objects.filter(every=10).update(every=20)
    IntervalSchedule.objects.get(every=20).save()  # what the admin does: fires the change signal
    run(scheduler, T0 + timedelta(seconds=10), ticks=2)
    run(scheduler, T0 + timedelta(seconds=20), ticks=2)
    assert sorted((slot, name) for name, slot, _ in scheduler.sent) == [
        (T0, "a"),
        (T0, "b"),
        (T0 + timedelta(seconds=20), "a"),
    ]


@pytest.mark.django_db(transaction=True)
def test_static_entries_are_installed_as_periodic_tasks_once(make_scheduler, beat_schedule) -> None:
    beat_schedule["sweep"] = {"task": "jobs.sweep_retries", "schedule": 2.0}
    make_scheduler().tick()
    task = PeriodicTask.objects.get(name="sweep")
    assert (task.task, task.interval.every, task.enabled) == ("jobs.sweep_retries", 2, True)
    first_change = task.date_changed
    make_scheduler().lease.release()
    again = make_scheduler()
    again.lease.client.delete(LEASE_KEY)
    again.tick()
    assert PeriodicTask.objects.get(name="sweep").date_changed == first_change


@pytest.mark.django_db(transaction=True)
def test_only_the_lease_holder_sends(make_scheduler) -> None:
    with time_machine.travel(T0 - timedelta(hours=1), tick=False):
        fire_task("job:7", seconds=1)
    first, second = make_scheduler(), make_scheduler()
    for step in range(5):
        run(first, T0 + timedelta(seconds=step), ticks=1)
        run(second, T0 + timedelta(seconds=step), ticks=1)
    assert len(first.sent) == 5
    assert second.sent == []
    first.close()  # a clean shutdown hands the lease over at once
    run(second, T0 + timedelta(seconds=5), ticks=2)
    assert [slot for _, slot, _ in second.sent] == [T0 + timedelta(seconds=5)]


def test_lease_is_compare_and_set(redis_client) -> None:
    redis_client.delete(LEASE_KEY)
    a = LeaderLease(client=redis_client, seconds=5, identity="a")
    b = LeaderLease(client=redis_client, seconds=5, identity="b")
    assert a.hold()
    assert not b.hold()
    assert a.hold()  # renewal
    redis_client.set(LEASE_KEY, "b", px=5000)  # a lapsed and b took over meanwhile
    assert not a.hold()  # a cannot renew b's lease
    a.release()
    assert redis_client.get(LEASE_KEY) == b"b"
    status = leader_status(client=redis_client)
    assert status["leader"] == "b"
    assert status["last_leader"] == "a"
    redis_client.delete(LEASE_KEY)


@pytest.mark.django_db(transaction=True)
def test_a_dropped_database_connection_does_not_stop_beat(make_scheduler) -> None:
    with time_machine.travel(T0 - timedelta(hours=1), tick=False):
        fire_task("job:7", seconds=1)
    scheduler = make_scheduler()
    run(scheduler, T0, ticks=1)
    connection.ensure_connection()
    backend_pid = connection.connection.info.backend_pid
    with psycopg.connect(**_admin_dsn()) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
    try:
        run(scheduler, T0 + timedelta(seconds=1), ticks=3)  # must not raise
        run(scheduler, T0 + timedelta(seconds=2), ticks=3)
    finally:
        connection.close()  # whatever happened, the test database teardown gets a fresh connection
    assert [slot for _, slot, _ in scheduler.sent] == [T0 + timedelta(seconds=n) for n in range(3)]
    assert PeriodicTask.objects.get(name="job:7").total_run_count >= 2


def _admin_dsn() -> dict[str, Any]:
    db = connection.settings_dict
    return {"host": db["HOST"], "port": db["PORT"] or 5432, "user": db["USER"], "dbname": db["NAME"]}
