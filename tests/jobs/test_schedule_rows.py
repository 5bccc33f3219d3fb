"""Jobs with equal schedules share one django-celery-beat row, however many are created at once (issue 10)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from jobs.models import JobSchedule
from jobs.schedules import beat_schedule_fields_bulk
from tests.api.conftest import job_body, token_client

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 16
INDEXES = ["jobs_beat_clocked_unique", "jobs_beat_interval_unique", "jobs_beat_crontab_unique"]
BEFORE, AFTER = ("jobs", "0007_worker_incarnation"), ("jobs", "0008_beat_schedule_rows_unique")


def _in_threads(count: int, clients: list[Any], work: Callable[[Any, int], Any]) -> list[Any]:
    """work(client, i) for i in range(count), spread over one thread per client, all started at once."""
    barrier = threading.Barrier(len(clients))
    results: list[Any] = [None] * count

    def run(n: int) -> None:
        try:
            barrier.wait(timeout=60)
            for i in range(n, count, len(clients)):
                results[i] = work(clients[n], i)
        finally:
            connections.close_all()  # each thread had its own connection

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    return results


def _post(client: Any, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    response = client.post(url, body, format="json")
    return response.status_code, response.json() if response.status_code < 500 else response.content[:500]


def _instant(minutes: int = 0) -> str:
    return (timezone.now() + timedelta(hours=1, minutes=minutes)).replace(microsecond=0).isoformat()


def _rows(schedule: dict[str, Any]) -> Any:
    """The beat rows equal to an API schedule."""
    if schedule["type"] == "once":
        return ClockedSchedule.objects.filter(clocked_time=parse_datetime(schedule["at"]))
    if schedule["type"] == "interval":
        return IntervalSchedule.objects.filter(every=schedule["every_seconds"], period="seconds")
    minute, hour, dom, month, dow = schedule["expression"].split()
    return CrontabSchedule.objects.filter(
        minute=minute,
        hour=hour,
        day_of_month=dom,
        month_of_year=month,
        day_of_week=dow,
        timezone=schedule["timezone"],
    )


def _same(answered: dict[str, Any], schedule: dict[str, Any]) -> bool:
    """Whether a job's schedule (as the API answers it) is the submitted one."""
    if answered["type"] != schedule["type"]:
        return False
    if schedule["type"] == "once":
        return parse_datetime(answered["at"]) == parse_datetime(schedule["at"])
    return all(answered[key] == value for key, value in schedule.items())


def _assert_one_row(schedule: dict[str, Any], job_ids: list[int]) -> None:
    """One beat row holds the schedule, and every job's PeriodicTask uses it."""
    rows = list(_rows(schedule))
    assert len(rows) == 1, rows
    field = {"once": "clocked_id", "interval": "interval_id", "cron": "crontab_id"}[schedule["type"]]
    tasks = PeriodicTask.objects.filter(name__in=[f"job:{pk}" for pk in job_ids])
    assert sorted(tasks.values_list(field, flat=True)) == [rows[0].pk] * len(job_ids)


@pytest.fixture
def clients(make_user) -> list[Any]:
    """One API client (its own knox token) per thread, all of one submitter."""
    alice = make_user("alice", "submitter")
    clients = [token_client(alice) for _ in range(THREADS)]
    for client in clients:
        client.raise_request_exception = False  # a 500 is an answer to count, not a dead thread
    return clients


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param({"type": "once", "at": _instant()}, id="once"),
        pytest.param({"type": "interval", "every_seconds": 77}, id="interval"),
        pytest.param({"type": "cron", "expression": "17 3 * * *", "timezone": "Europe/Paris"}, id="cron"),
    ],
)
@pytest.mark.parametrize("round_", [1, 2, 3])  # each scenario three times in a row
def test_concurrent_creates_share_one_schedule_row(round_, clients, schedule):
    """50 jobs with one schedule from 16 threads at once, then one more: all 201, one beat row."""
    results = _in_threads(
        50,
        clients,
        lambda client, i: _post(client, "/api/v1/jobs/", job_body(name=f"j{i}", schedule=schedule)),
    )
    results.append(_post(clients[0], "/api/v1/jobs/", job_body(name="one more", schedule=schedule)))
    assert [status for status, _ in results] == [201] * 51, [r for r in results if r[0] != 201][:3]
    _assert_one_row(schedule, [body["id"] for _, body in results])


def test_bulk_creates_racing_single_creates_share_the_rows(clients):
    """Batches (in different orders) and single creates for the same schedules: all 201, one row each."""
    schedules: list[dict[str, Any]] = []
    for k in range(5):
        schedules.append({"type": "once", "at": _instant(k)})
        schedules.append({"type": "interval", "every_seconds": 101 + k})
        schedules.append({"type": "cron", "expression": f"{k} 4 * * *", "timezone": "Europe/Paris"})
    count = len(schedules)

    def bodies(n: int) -> list[dict[str, Any]]:
        turned = schedules[n:] + schedules[:n]  # each batch writes its rows in another order
        return [job_body(name=f"b{n}-{i}", schedule=s) for i, s in enumerate(turned)]

    def work(client: Any, n: int) -> list[tuple[int, Any]]:
        if n % 2:
            return [_post(client, "/api/v1/jobs/bulk/", {"jobs": bodies(n)})]
        return [_post(client, "/api/v1/jobs/", body) for body in bodies(n)]

    results = [result for batch in _in_threads(THREADS, clients, work) for result in batch]
    results.append(_post(clients[0], "/api/v1/jobs/bulk/", {"jobs": bodies(0)}))
    failed = [result for result in results if result[0] != 201]
    assert not failed, failed[:3]
    jobs = [job for _, body in results for job in body.get("jobs", [body])]
    assert len(jobs) == (THREADS // 2) * count + (THREADS // 2) * count + count
    for schedule in schedules:
        mine = [job["id"] for job in jobs if _same(job["schedule"], schedule)]
        assert len(mine) == THREADS + 1, schedule
        _assert_one_row(schedule, mine)


def test_bulk_path_queries_do_not_grow_with_new_rows():
    """New rows of a batch are read and inserted with one statement each per model, whatever their number."""
    counts = []
    for size, offset in ((2, 0), (40, 100)):
        start = timezone.now() + timedelta(days=1)
        schedules = [
            JobSchedule(type=JobSchedule.Type.ONCE, run_at=start + timedelta(minutes=offset + i))
            for i in range(size)
        ] + [JobSchedule(type=JobSchedule.Type.INTERVAL, every_seconds=offset + i + 1) for i in range(size)]
        with CaptureQueriesContext(connection) as queries:
            fields = beat_schedule_fields_bulk(schedules)
        counts.append([query["sql"][:40] for query in queries])
        assert len({f["clocked"].pk for f in fields[:size]}) == size
        assert len({f["interval"].pk for f in fields[size:]}) == size
    assert [len(sqls) for sqls in counts] == [4, 4], counts  # per model: the read, the insert


def _index_names() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE indexname = ANY(%s) ORDER BY 1", [INDEXES])
        return [name for (name,) in cursor.fetchall()]


def _migrate(*targets: tuple[str, str]) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(list(targets) or executor.loader.graph.leaf_nodes())


def test_the_migration_merges_equal_rows_and_makes_them_unique():
    _migrate(BEFORE)
    assert _index_names() == []
    at = timezone.now() + timedelta(hours=1)
    clocked = [ClockedSchedule.objects.create(clocked_time=at) for _ in range(3)]
    other_clocked = ClockedSchedule.objects.create(clocked_time=at + timedelta(seconds=1))
    interval = [IntervalSchedule.objects.create(every=60, period="seconds") for _ in range(2)]
    other_interval = IntervalSchedule.objects.create(every=60, period="minutes")
    cron = {"minute": "0", "hour": "4", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}
    crontab = [CrontabSchedule.objects.create(**cron, timezone="Europe/Paris") for _ in range(2)]
    other_crontab = CrontabSchedule.objects.create(**cron, timezone="Europe/Berlin")  # differs by zone only
    uses = [("clocked", row) for row in [*clocked, other_clocked]]
    uses += [("interval", row) for row in [*interval, other_interval]]
    uses += [("crontab", row) for row in [*crontab, other_crontab]]
    tasks = [
        PeriodicTask.objects.create(
            name=f"t{i}", task="jobs.fire", one_off=field == "clocked", **{field: row}
        )
        for i, (field, row) in enumerate(uses)
    ]
    _migrate()  # forward to the latest migrations
    assert _index_names() == sorted(INDEXES)
    for model, rows in (
        (ClockedSchedule, [*clocked, other_clocked]),
        (IntervalSchedule, [*interval, other_interval]),
        (CrontabSchedule, [*crontab, other_crontab]),
    ):
        left = model.objects.filter(pk__in=[row.pk for row in rows]).order_by("pk")  # type: ignore[attr-defined]
        assert list(left) == [rows[0], rows[-1]]  # the oldest of the equal ones, and the different one
    kept = {row.pk: group[0].pk for group in (clocked, interval, crontab) for row in group}
    for task, (field, row) in zip(tasks, uses, strict=True):
        task.refresh_from_db()
        assert getattr(task, f"{field}_id") == kept.get(row.pk, row.pk), task.name
    with pytest.raises(IntegrityError), transaction.atomic():
        IntervalSchedule.objects.create(every=60, period="seconds")


def test_the_admin_refuses_an_equal_row_as_a_form_error(client):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    client.force_login(user)
    existing = IntervalSchedule.objects.create(every=60, period="seconds")
    management = {"periodictask_set-TOTAL_FORMS": 0, "periodictask_set-INITIAL_FORMS": 0}
    url = reverse("admin:django_celery_beat_intervalschedule_add")
    response = client.post(url, {"every": 60, "period": "seconds", **management})
    assert response.status_code == 200
    assert f"exists already (id {existing.pk})" in response.content.decode()
    assert IntervalSchedule.objects.count() == 1
    response = client.post(url, {"every": 61, "period": "seconds", **management})
    assert response.status_code == 302
    changed = reverse("admin:django_celery_beat_intervalschedule_change", args=[existing.pk])
    response = client.post(changed, {"every": 61, "period": "seconds", **management})
    assert response.status_code == 200  # editing a row into an equal one is refused too
    assert IntervalSchedule.objects.get(pk=existing.pk).every == 60
