"""jobs/bulk/ and jobs/bulk-run/: all or nothing, every bad item named by index, the single path's rules."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connections, transaction
from django_celery_beat.models import PeriodicTask

from jobs.models import Execution, Job, JobSchedule
from jobs.services import jobs_create_bulk
from tests.api.conftest import in_one_hour, job_body, token_client
from tests.conftest import wait_for
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db

BULK = "/api/v1/jobs/bulk/"
BULK_RUN = "/api/v1/jobs/bulk-run/"


def _bodies(count: int, **overrides: Any) -> list[dict[str, Any]]:
    return [job_body(name=f"echo-{i}", **overrides) for i in range(count)]


def _nothing_created() -> None:
    assert Job.objects.count() == 0
    assert JobSchedule.objects.count() == 0
    assert not PeriodicTask.objects.filter(name__startswith="job:").exists()


# --- jobs/bulk/ ----------------------------------------------------------------------------------


def test_bulk_creates_every_job_with_its_schedule_and_beat_entry(as_alice, alice):
    bodies = _bodies(3)
    bodies[1]["schedule"] = {"type": "cron", "expression": "30 2 * * 1-5", "timezone": "Europe/Paris"}
    bodies[2]["schedule"] = None
    response = as_alice.post(BULK, {"jobs": bodies}, format="json")
    assert response.status_code == 201, response.content
    jobs = response.json()["jobs"]
    assert [job["name"] for job in jobs] == ["echo-0", "echo-1", "echo-2"]  # the order of the items
    assert all(job["owner"] == "alice" and job["status"] == "active" for job in jobs)
    assert jobs[0]["schedule"]["every_seconds"] == 60
    assert jobs[0]["next_run_at"] is not None
    assert jobs[1]["schedule"]["expression"] == "30 2 * * 1-5"
    assert jobs[2]["schedule"] is None
    assert Job.objects.filter(owner=alice).count() == 3
    tasks = PeriodicTask.objects.filter(name__startswith="job:")
    assert sorted(tasks.values_list("name", flat=True)) == sorted(f"job:{job['id']}" for job in jobs[:2])
    assert JobSchedule.objects.filter(periodic_task__isnull=False).count() == 2


def test_each_job_in_the_answer_is_what_get_answers(as_alice):
    bodies = _bodies(5)
    bodies[1]["schedule"] = {"type": "cron", "expression": "30 2 * * 1-5", "timezone": "Europe/Paris"}
    bodies[2]["schedule"] = {"type": "once", "at": in_one_hour()}
    bodies[3]["schedule"] = {
        "type": "interval",
        "every_seconds": 90,
        "start_at": in_one_hour(),
        "end_at": "2099-01-01T00:00:00+05:00",
        "max_runs": 3,
    }
    bodies[4].update(schedule=None, resources={"cpu": 0.25, "memory_mb": 100}, node_selector={"a": "b"})
    created = as_alice.post(BULK, {"jobs": bodies}, format="json").json()["jobs"]
    assert created == [as_alice.get(f"/api/v1/jobs/{job['id']}/").json() for job in created]


def test_bad_items_are_named_by_index_and_field_and_nothing_is_created(as_alice):
    bodies = _bodies(6)
    bodies[2]["payload"] = {"handler": "nope"}  # refused by the jobs services
    del bodies[5]["name"]  # refused by the serializer (a required field)
    response = as_alice.post(BULK, {"jobs": bodies}, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert set(errors) == {"jobs.2.payload.handler", "jobs.5.name"}
    assert "'nope' is not a registered handler" in errors["jobs.2.payload.handler"][0]
    assert errors["jobs.5.name"] == ["This field is required."]
    _nothing_created()


def test_service_errors_use_the_api_field_names(as_alice, node, settings):
    settings.SCHEDULER_REFUSE_UNPLACEABLE_JOBS = True  # else a job too large for every node is accepted
    bodies = _bodies(5)
    bodies[1]["schedule"] = {"type": "cron", "expression": "61 * * * *", "timezone": "Mars/Olympus"}
    bodies[3]["resources"] = {"cpu": 64}  # the only node has 4
    bodies[4]["priority"] = 10
    response = as_alice.post(BULK, {"jobs": bodies}, format="json")
    assert response.status_code == 400, response.content
    assert set(response.json()) == {
        "jobs.1.schedule.expression",
        "jobs.1.schedule.timezone",
        "jobs.3.resources.cpu",
        "jobs.4.priority",
    }
    _nothing_created()


def test_a_job_larger_than_every_node_is_accepted_in_bulk_too(as_alice, node):
    bodies = _bodies(2)
    bodies[1]["resources"] = {"cpu": 64}  # the only node has 4: it waits pending for a larger one
    response = as_alice.post(BULK, {"jobs": bodies}, format="json")
    assert response.status_code == 201, response.content
    assert Job.objects.count() == 2


def test_wrong_json_types_are_named_per_item(as_alice):
    bodies = _bodies(3)
    bodies[0]["priority"] = "5"
    bodies[2] = "not a job"  # type: ignore[call-overload]
    response = as_alice.post(BULK, {"jobs": bodies}, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"jobs.0.priority", "jobs.2.non_field_errors"}
    _nothing_created()


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"jobs": []}, "jobs"),
        ({"jobs": {"name": "x"}}, "jobs"),
        ({"jobs": "x"}, "jobs"),
        ({}, "jobs"),
        ([job_body()], "non_field_errors"),
    ],
    ids=["empty", "object", "string", "missing", "bare-list"],
)
def test_the_list_itself_is_checked(as_alice, body, key):
    response = as_alice.post(BULK, body, format="json")
    assert response.status_code == 400
    assert key in response.json()
    _nothing_created()


def test_at_most_the_limit(as_alice, settings):
    settings.SCHEDULER_BULK_MAX_ITEMS = 3
    response = as_alice.post(BULK, {"jobs": _bodies(4)}, format="json")
    assert response.status_code == 400
    assert response.json() == {"jobs": ["Ensure this field has no more than 3 elements."]}
    _nothing_created()
    assert as_alice.post(BULK, {"jobs": _bodies(3)}, format="json").status_code == 201


def test_default_limit_is_a_thousand(as_alice):
    response = as_alice.post(BULK, {"jobs": [{"name": "x"}] * 1001}, format="json")
    assert response.status_code == 400
    assert response.json() == {"jobs": ["Ensure this field has no more than 1000 elements."]}


def test_shell_items_need_the_permission_like_a_single_create(as_alice, make_user):
    bodies = _bodies(4)
    for index in (1, 3):
        bodies[index].update(kind="shell", payload={"command": ["echo", "hi"]})
    response = as_alice.post(BULK, {"jobs": bodies}, format="json")
    assert response.status_code == 403
    body = response.json()
    assert body["detail"] == "shell jobs need the permission jobs.run_shell"
    assert set(body) == {"detail", "jobs.1.kind", "jobs.3.kind"}
    _nothing_created()
    shell_user = token_client(make_user("sam", "submitter", run_shell=True))
    assert shell_user.post(BULK, {"jobs": bodies}, format="json").status_code == 201


def test_http_items_to_private_addresses_are_refused_per_item(as_alice):
    bodies = _bodies(3)
    bodies[1].update(kind="http", payload={"url": "http://127.0.0.1:8000/"})
    bodies[2].update(kind="http", payload={"url": "http://169.254.169.254/latest/meta-data"})
    response = as_alice.post(BULK, {"jobs": bodies}, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"jobs.1.payload.url", "jobs.2.payload.url"}
    _nothing_created()


def test_viewers_may_not_submit(as_vic):
    assert as_vic.post(BULK, {"jobs": _bodies(1)}, format="json").status_code == 403
    assert as_vic.post(BULK_RUN, {"jobs": [1]}, format="json").status_code == 403


def test_idempotency_key_returns_the_same_batch(as_alice, as_bob):
    first = as_alice.post(BULK, {"jobs": _bodies(3)}, format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    assert first.status_code == 201
    ids = [job["id"] for job in first.json()["jobs"]]
    # A retry (even with another body, as for a single create) is the first batch, unchanged.
    again = as_alice.post(
        BULK, {"jobs": _bodies(5, priority=9)}, format="json", HTTP_IDEMPOTENCY_KEY="batch-1"
    )
    assert again.status_code == 200
    assert [job["id"] for job in again.json()["jobs"]] == ids
    assert [job["priority"] for job in again.json()["jobs"]] == [5, 5, 5]
    assert Job.objects.count() == 3
    # Another key, another user's same key, or the key of a single create: new jobs.
    assert (
        as_alice.post(BULK, {"jobs": _bodies(1)}, format="json", HTTP_IDEMPOTENCY_KEY="batch-2").status_code
        == 201
    )
    assert (
        as_bob.post(BULK, {"jobs": _bodies(1)}, format="json", HTTP_IDEMPOTENCY_KEY="batch-1").status_code
        == 201
    )
    single = as_alice.post("/api/v1/jobs/", job_body(), format="json", HTTP_IDEMPOTENCY_KEY="batch-1")
    assert single.status_code == 201
    assert Job.objects.count() == 6
    too_long = as_alice.post(BULK, {"jobs": _bodies(1)}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 300)
    assert too_long.status_code == 400
    assert set(too_long.json()) == {"Idempotency-Key"}


def test_idempotency_key_with_a_bad_body_is_a_400_like_a_single_create(as_alice):
    assert (
        as_alice.post(BULK, {"jobs": _bodies(2)}, format="json", HTTP_IDEMPOTENCY_KEY="b").status_code == 201
    )
    bad = as_alice.post(BULK, {"jobs": [{"kind": "python"}]}, format="json", HTTP_IDEMPOTENCY_KEY="b")
    assert bad.status_code == 400  # JSON types are checked before the key, as for POST jobs/


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_with_one_key_create_one_batch(alice):
    """The loser of the unique (owner, key) race answers 200 with the winner's jobs."""
    client = token_client(alice)
    winner_ready, release = threading.Event(), threading.Event()
    winner: dict[str, Any] = {}

    def concurrent_batch() -> None:
        try:
            with transaction.atomic():
                items = [{**job_body(name=f"winner-{i}")} for i in range(2)]
                winner["jobs"] = jobs_create_bulk(owner=alice, items=items, idempotency_key="race").jobs
                winner_ready.set()
                release.wait(30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=concurrent_batch)
    thread.start()
    assert winner_ready.wait(30)
    result: dict[str, Any] = {}

    def our_batch() -> None:
        try:
            result["response"] = client.post(
                BULK, {"jobs": _bodies(3)}, format="json", HTTP_IDEMPOTENCY_KEY="race"
            )
        finally:
            connections.close_all()

    ours = threading.Thread(target=our_batch)
    ours.start()
    with connections["default"].cursor() as cursor:

        def blocked() -> bool:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            return cursor.fetchone()[0] >= 1

        wait_for(blocked, timeout=30, what="the second batch to block on the unique index")
    release.set()
    thread.join(30)
    ours.join(30)
    response = result["response"]
    assert response.status_code == 200, response.content
    assert [job["id"] for job in response.json()["jobs"]] == [job.pk for job in winner["jobs"]]
    assert Job.objects.filter(owner=alice).count() == 2
    assert PeriodicTask.objects.filter(name__startswith="job:").count() == 2


# --- jobs/bulk-run/ ------------------------------------------------------------------------------


def test_bulk_run_starts_one_execution_per_job(as_alice, alice, node):
    jobs = [JobFactory(owner=alice) for _ in range(3)]
    response = as_alice.post(BULK_RUN, {"jobs": [jobs[2].pk, jobs[0].pk]}, format="json")
    assert response.status_code == 201, response.content
    executions = response.json()["executions"]
    assert [e["job"] for e in executions] == [jobs[2].pk, jobs[0].pk]
    assert all(e["trigger"] == "manual" and "output" in e for e in executions)  # the detail, as run/ gives
    assert Execution.objects.filter(job=jobs[1]).count() == 0


def test_bulk_run_does_not_reveal_or_run_other_users_jobs(as_alice, alice, bob):
    mine, bobs = JobFactory(owner=alice), JobFactory(owner=bob)
    response = as_alice.post(BULK_RUN, {"jobs": [mine.pk, bobs.pk, 999_999_999]}, format="json")
    assert response.status_code == 400
    errors = response.json()
    assert set(errors) == {"jobs.1", "jobs.2"}
    assert errors["jobs.1"] == errors["jobs.2"]  # someone else's job reads as one that does not exist
    assert Execution.objects.count() == 0


def test_bulk_run_refuses_archived_and_repeated_jobs(as_alice, alice):
    live, archived = JobFactory(owner=alice), JobFactory(owner=alice, status=Job.Status.ARCHIVED)
    response = as_alice.post(BULK_RUN, {"jobs": [live.pk, archived.pk, live.pk]}, format="json")
    assert response.status_code == 400
    errors = response.json()
    assert set(errors) == {"jobs.1", "jobs.2"}
    assert "archived" in errors["jobs.1"][0]
    assert "listed already" in errors["jobs.2"][0]
    assert Execution.objects.count() == 0


def test_operators_bulk_run_anyones_jobs(as_olga, alice, bob, node):
    jobs = [JobFactory(owner=alice), JobFactory(owner=bob)]
    response = as_olga.post(BULK_RUN, {"jobs": [job.pk for job in jobs]}, format="json")
    assert response.status_code == 201
    assert Execution.objects.count() == 2


@pytest.mark.parametrize(
    "body",
    [{"jobs": []}, {"jobs": ["1"]}, {"jobs": [0]}, {"jobs": [True]}, {"jobs": 5}, {}],
    ids=["empty", "string-id", "zero", "boolean", "not-a-list", "missing"],
)
def test_bulk_run_checks_its_list(as_alice, body):
    response = as_alice.post(BULK_RUN, body, format="json")
    assert response.status_code == 400
    assert all(key.startswith("jobs") for key in response.json())


def test_bulk_run_limit(as_alice, alice, settings):
    settings.SCHEDULER_BULK_MAX_ITEMS = 2
    jobs = [JobFactory(owner=alice) for _ in range(3)]
    response = as_alice.post(BULK_RUN, {"jobs": [job.pk for job in jobs]}, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"jobs"}
    assert Execution.objects.count() == 0
