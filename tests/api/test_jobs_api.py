"""jobs/ endpoints: submit, read, change, pause, resume, run now, delete; input errors; idempotency."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from jobs.models import Execution, Job, JobSchedule
from tests.api.conftest import in_one_hour, job_body, token_client
from tests.conftest import wait_for
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db


def test_login_token_creates_and_lists_a_job(alice, api_login):
    client = api_login("alice")
    response = client.post("/api/v1/jobs/", job_body(description="demo", priority=7), format="json")
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["owner"] == "alice"
    assert job["status"] == "active"
    assert job["priority"] == 7
    assert job["schedule"] == {
        "type": "interval", "at": None, "every_seconds": 60, "expression": None, "timezone": "UTC",
        "start_at": None, "end_at": None, "max_runs": None,
    }  # fmt: skip
    assert job["resources"] == {"cpu": 0.1, "memory_mb": 64}
    assert job["next_run_at"] is not None
    assert job["last_execution"] is None
    listing = client.get("/api/v1/jobs/").json()
    assert listing["count"] == 1
    assert listing["results"][0]["id"] == job["id"]
    assert client.get(f"/api/v1/jobs/{job['id']}/").json()["name"] == "echo"


def test_every_schedule_type_round_trips(as_alice):
    once_at = in_one_hour()
    cron = {"type": "cron", "expression": "30 2 * * 1-5", "timezone": "Europe/Paris", "max_runs": 3}
    for schedule in ({"type": "once", "at": once_at}, cron, None):
        response = as_alice.post("/api/v1/jobs/", job_body(schedule=schedule), format="json")
        assert response.status_code == 201, response.content
        body = response.json()
        if schedule is None:
            assert body["schedule"] is None
            assert body["next_run_at"] is None
        elif schedule["type"] == "once":
            assert body["next_run_at"] == body["schedule"]["at"]
        else:
            assert body["schedule"]["expression"] == "30 2 * * 1-5"
            assert body["schedule"]["timezone"] == "Europe/Paris"
            assert body["schedule"]["max_runs"] == 3
    assert JobSchedule.objects.filter(type="cron", cron_expression="30 2 * * 1-5").exists()


def test_resources_selector_retry_policy_are_stored(as_alice, node):
    body = job_body(
        resources={"cpu": 0.5, "memory_mb": 256},
        node_selector={},
        timeout_seconds=120,
        max_retries=3,
        retry_backoff_seconds=5,
        retry_backoff_max_seconds=60,
        concurrency_policy="forbid",
        misfire_policy="skip",
    )
    response = as_alice.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert (str(job.cpu), job.memory_mb, job.timeout_seconds) == ("0.500", 256, 120)
    assert (job.max_retries, job.retry_backoff_seconds, job.retry_backoff_max_seconds) == (3, 5, 60)
    assert (job.concurrency_policy, job.misfire_policy) == ("forbid", "skip")


def test_patch_changes_fields_and_schedule(as_alice, alice):
    job = as_alice.post("/api/v1/jobs/", job_body(), format="json").json()
    response = as_alice.patch(
        f"/api/v1/jobs/{job['id']}/",
        {
            "priority": 9,
            "resources": {"memory_mb": 128},
            "schedule": {"type": "cron", "expression": "0 * * * *"},
        },
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["priority"] == 9
    assert body["resources"] == {"cpu": 0.1, "memory_mb": 128}
    assert body["schedule"]["type"] == "cron"
    response = as_alice.patch(f"/api/v1/jobs/{job['id']}/", {"schedule": None}, format="json")
    assert response.json()["schedule"] is None
    assert not JobSchedule.objects.filter(job_id=job["id"]).exists()


def test_patch_schedule_without_type_is_refused_not_removed(as_alice):
    job = as_alice.post("/api/v1/jobs/", job_body(), format="json").json()
    response = as_alice.patch(f"/api/v1/jobs/{job['id']}/", {"schedule": {"every_seconds": 5}}, format="json")
    assert response.status_code == 400
    assert "schedule.type" in response.json()
    assert JobSchedule.objects.get(job_id=job["id"]).every_seconds == 60


def test_read_only_fields_cannot_be_written(as_alice, alice, bob):
    body = job_body(owner="bob", status="paused", id=999, created_at="2000-01-01T00:00:00Z", next_run_at=None)
    response = as_alice.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201
    job = Job.objects.get(pk=response.json()["id"])
    assert (job.owner, job.status) == (alice, Job.Status.ACTIVE)
    assert job.created_at.year == timezone.now().year
    response = as_alice.patch(
        f"/api/v1/jobs/{job.pk}/", {"owner": "bob", "status": "archived"}, format="json"
    )
    assert response.status_code == 200
    job.refresh_from_db()
    assert (job.owner, job.status) == (alice, Job.Status.ACTIVE)


def test_pause_resume_delete(as_alice):
    job = as_alice.post("/api/v1/jobs/", job_body(), format="json").json()
    url = f"/api/v1/jobs/{job['id']}/"
    paused = as_alice.post(url + "pause/")
    assert paused.status_code == 200
    assert paused.json()["status"] == "paused"
    assert paused.json()["next_run_at"] is None
    assert as_alice.post(url + "pause/").status_code == 200  # idempotent
    resumed = as_alice.post(url + "resume/")
    assert resumed.json()["status"] == "active"
    assert resumed.json()["next_run_at"] is not None
    assert as_alice.delete(url).status_code == 204
    assert Job.objects.get(pk=job["id"]).status == Job.Status.ARCHIVED
    assert as_alice.delete(url).status_code == 204  # idempotent
    assert as_alice.get("/api/v1/jobs/").json()["count"] == 0  # archived jobs leave the default list
    assert as_alice.get("/api/v1/jobs/?status=archived").json()["count"] == 1
    assert as_alice.get(url).json()["status"] == "archived"  # kept for its history
    conflict = as_alice.post(url + "resume/")
    assert conflict.status_code == 409
    assert "archived" in conflict.json()["detail"]
    assert as_alice.post(url + "run/").status_code == 400


def test_run_now_returns_the_new_execution(as_alice, node):
    job = as_alice.post("/api/v1/jobs/", job_body(schedule=None), format="json").json()
    response = as_alice.post(f"/api/v1/jobs/{job['id']}/run/")
    assert response.status_code == 201, response.content
    execution = response.json()
    assert execution["job"] == job["id"]
    assert execution["trigger"] == "manual"
    assert execution["status"] == "queued"  # placed on the only node
    assert execution["node"] == node.name
    refreshed = as_alice.get(f"/api/v1/jobs/{job['id']}/").json()
    assert refreshed["last_execution"]["id"] == execution["id"]
    assert refreshed["last_execution"]["status"] == "queued"


def test_run_now_without_nodes_stays_pending(as_alice):
    job = as_alice.post("/api/v1/jobs/", job_body(schedule=None), format="json").json()
    execution = as_alice.post(f"/api/v1/jobs/{job['id']}/run/").json()
    assert execution["status"] == "pending"
    assert execution["node"] is None


def test_a_job_larger_than_every_node_is_accepted_and_waits_with_the_shortfall(as_alice, node):
    body = job_body(schedule=None, resources={"cpu": 8, "memory_mb": 16384})
    created = as_alice.post("/api/v1/jobs/", body, format="json")
    assert created.status_code == 201, created.content  # a larger node may join (an autoscaler's)
    execution = as_alice.post(f"/api/v1/jobs/{created.json()['id']}/run/").json()
    assert execution["status"] == "pending"
    assert execution["pending_reason"] == (
        "waiting for a larger node: no online node has 8.000 cpu and 16384 MB "
        "(largest online: 4.000 cpu, 4096 MB)"
    )


def test_a_job_larger_than_every_node_is_refused_when_so_configured(as_alice, node, settings):
    settings.SCHEDULER_REFUSE_UNPLACEABLE_JOBS = True
    body = job_body(schedule=None, resources={"cpu": 8})
    response = as_alice.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400
    assert "is large enough" in response.json()["resources.cpu"][0]


def test_list_filters_and_ordering(as_alice, alice):
    JobFactory(owner=alice, name="zeta", priority=1)
    JobFactory(owner=alice, name="alpha", priority=9, kind="http", payload={"url": "https://example.com/"})
    paused = JobFactory(owner=alice, name="beta", priority=5, status=Job.Status.PAUSED)
    names = [j["name"] for j in as_alice.get("/api/v1/jobs/?ordering=name").json()["results"]]
    assert names == ["alpha", "beta", "zeta"]
    names = [j["name"] for j in as_alice.get("/api/v1/jobs/?ordering=-priority").json()["results"]]
    assert names == ["alpha", "beta", "zeta"]
    assert [j["id"] for j in as_alice.get("/api/v1/jobs/?status=paused").json()["results"]] == [paused.pk]
    assert as_alice.get("/api/v1/jobs/?kind=http").json()["count"] == 1
    assert as_alice.get("/api/v1/jobs/?name=ET").json()["count"] == 2  # zeta, beta
    page = as_alice.get("/api/v1/jobs/?limit=2&offset=1&ordering=name").json()
    assert (page["count"], [j["name"] for j in page["results"]]) == (3, ["beta", "zeta"])
    assert page["previous"] is not None
    assert as_alice.get("/api/v1/jobs/?status=bogus").status_code == 400


# --- bad input: always 400 naming the field, never 500 --------------------------------------

BAD_INPUT = [
    ({"schedule": {"type": "cron", "expression": "61 * * * *"}}, "schedule.expression"),
    ({"schedule": {"type": "cron", "expression": "* * *"}}, "schedule.expression"),
    (
        {"schedule": {"type": "cron", "expression": "0 * * * *", "timezone": "Mars/Olympus"}},
        "schedule.timezone",
    ),
    ({"schedule": {"type": "interval", "every_seconds": -5}}, "schedule.every_seconds"),
    ({"schedule": {"type": "interval", "every_seconds": 0}}, "schedule.every_seconds"),
    ({"schedule": {"type": "once", "at": "2001-01-01T00:00:00Z"}}, "schedule.at"),
    ({"schedule": {"type": "once", "at": "next tuesday"}}, "schedule.at"),
    ({"schedule": {"type": "once"}}, "schedule.at"),
    ({"schedule": {"type": "weekly"}}, "schedule.type"),
    ({"schedule": "every minute"}, "schedule.non_field_errors"),
    ({"kind": "shell", "payload": {"command": []}}, "payload.command"),
    ({"payload": {"handler": "no_such_handler"}}, "payload.handler"),
    ({"payload": {"handler": "echo", "nope": 1}}, "payload"),
    ({"payload": "echo"}, "payload"),
    ({"priority": 10}, "priority"),
    ({"priority": -1}, "priority"),
    ({"priority": "high"}, "priority"),
    ({"kind": "perl"}, "kind"),
    ({"name": ""}, "name"),
    ({"name": 12}, "name"),
    ({"name": None}, "name"),
    ({"resources": {"cpu": "lots"}}, "resources.cpu"),
    ({"resources": {"cpu": -1}}, "resources.cpu"),
    ({"resources": {"memory_mb": "1GB"}}, "resources.memory_mb"),
    ({"node_selector": {"gpu": 1}}, "node_selector"),
    ({"node_selector": ["gpu"]}, "node_selector"),
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"timeout_seconds": 10**12}, "timeout_seconds"),
    ({"max_retries": 101}, "max_retries"),
    ({"retry_backoff_seconds": 100, "retry_backoff_max_seconds": 10}, "retry_backoff_max_seconds"),
    ({"concurrency_policy": "sometimes"}, "concurrency_policy"),
    ({"retry_jitter": "maybe"}, "retry_jitter"),
    ({"kind": "http", "payload": {"url": "ftp://example.com/"}}, "payload.url"),
    ({"schedule": {"type": "interval", "every_seconds": 60, "max_runs": 10**20}}, "schedule.max_runs"),
]


@pytest.mark.parametrize(("overrides", "field"), BAD_INPUT)
def test_bad_input_is_400_naming_the_field(as_alice, overrides, field):
    response = as_alice.post("/api/v1/jobs/", job_body(**overrides), format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not Job.objects.exists()  # nothing half-created


def test_bad_patch_is_400_and_changes_nothing(as_alice):
    job = as_alice.post("/api/v1/jobs/", job_body(), format="json").json()
    response = as_alice.patch(
        f"/api/v1/jobs/{job['id']}/",
        {"priority": 3, "schedule": {"type": "cron", "expression": "bad"}},
        format="json",
    )
    assert response.status_code == 400
    assert "schedule.expression" in response.json()
    assert Job.objects.get(pk=job["id"]).priority == 5


def test_body_that_is_not_an_object_or_not_json(as_alice):
    assert as_alice.post("/api/v1/jobs/", [1, 2], format="json").status_code == 400
    response = as_alice.post("/api/v1/jobs/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]
    nul = as_alice.post("/api/v1/jobs/", job_body(name="a\u0000b"), format="json")
    assert nul.status_code == 400
    deep = "[" * 5000 + "]" * 5000
    response = as_alice.post("/api/v1/jobs/", deep, content_type="application/json")
    assert response.status_code == 400
    assert as_alice.post("/api/v1/jobs/", "NaN", content_type="application/json").status_code == 400
    form = as_alice.post("/api/v1/jobs/", {"name": "x"})  # multipart: JSON only
    assert form.status_code == 415


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=10_000, SCHEDULER_MAX_PAYLOAD_BYTES=2_000)
def test_huge_bodies_and_payloads_are_refused(as_alice):
    huge = job_body(payload={"handler": "echo", "kwargs": {"message": "x" * 20_000}})
    response = as_alice.post("/api/v1/jobs/", huge, format="json")
    assert response.status_code == 413
    assert "10000 bytes" in response.json()["detail"]
    big = job_body(payload={"handler": "echo", "kwargs": {"message": "x" * 5_000}})
    response = as_alice.post("/api/v1/jobs/", big, format="json")
    assert response.status_code == 400
    assert "2000 bytes" in response.json()["payload"][0]
    assert not Job.objects.exists()


def test_shell_jobs_need_run_shell_permission(as_alice, make_user):
    shell = job_body(kind="shell", payload={"command": ["echo", "hi"]})
    response = as_alice.post("/api/v1/jobs/", shell, format="json")
    assert response.status_code == 403
    assert "jobs.run_shell" in response.json()["detail"]
    assert "kind" in response.json()
    allowed = token_client(make_user("sam", "submitter", run_shell=True))
    assert allowed.post("/api/v1/jobs/", shell, format="json").status_code == 201
    job = as_alice.post("/api/v1/jobs/", job_body(), format="json").json()
    response = as_alice.patch(f"/api/v1/jobs/{job['id']}/", {"kind": "shell", "payload": shell["payload"]},
                              format="json")  # fmt: skip
    assert response.status_code == 403
    assert Job.objects.get(pk=job["id"]).kind == "python"


def test_running_a_shell_job_needs_run_shell_now_not_only_at_creation(make_user):
    sam = make_user("sam", "submitter", run_shell=True)
    client = token_client(sam)
    shell = job_body(kind="shell", payload={"command": ["echo", "hi"]})
    job = client.post("/api/v1/jobs/", shell, format="json").json()
    sam.user_permissions.clear()  # run_shell taken away after the job was created
    sam = type(sam).objects.get(pk=sam.pk)
    client = token_client(sam)
    response = client.post(f"/api/v1/jobs/{job['id']}/run/", {}, format="json")
    assert response.status_code == 403, response.content
    assert "jobs.run_shell" in response.json()["detail"]
    response = client.post("/api/v1/jobs/bulk-run/", {"jobs": [job["id"]]}, format="json")
    assert response.status_code == 403, response.content
    assert not Execution.objects.filter(job_id=job["id"]).exists()


# --- Idempotency-Key -------------------------------------------------------------------------


def test_idempotency_key_returns_the_same_job(as_alice, as_bob):
    first = as_alice.post("/api/v1/jobs/", job_body(), format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 201
    again = as_alice.post("/api/v1/jobs/", job_body(name="other"), format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["name"] == "echo"
    other_key = as_alice.post("/api/v1/jobs/", job_body(), format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert other_key.status_code == 201
    # Keys are per user: bob's k-1 is his own new job.
    bobs = as_bob.post("/api/v1/jobs/", job_body(), format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert bobs.status_code == 201
    assert bobs.json()["id"] != first.json()["id"]
    assert Job.objects.count() == 3
    too_long = as_alice.post("/api/v1/jobs/", job_body(), format="json", HTTP_IDEMPOTENCY_KEY="k" * 300)
    assert too_long.status_code == 400
    assert "Idempotency-Key" in too_long.json()


@pytest.mark.django_db(transaction=True)
def test_idempotency_key_race_returns_the_winner(alice):
    """A create that loses the unique (owner, key) race to a concurrent one returns the winner's job."""
    client = token_client(alice)
    winner_ready, release = threading.Event(), threading.Event()
    winner: dict[str, Any] = {}

    def concurrent_create() -> None:
        # Another request's transaction: inserted, not yet committed while ours runs its checks.
        from django.db import transaction

        try:
            with transaction.atomic():
                winner["job"] = JobFactory(owner=alice, name="winner", idempotency_key="race")
                winner_ready.set()
                release.wait(30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=concurrent_create)
    thread.start()
    assert winner_ready.wait(30)
    result: dict[str, Any] = {}

    def our_create() -> None:
        try:
            result["response"] = client.post(
                "/api/v1/jobs/", job_body(), format="json", HTTP_IDEMPOTENCY_KEY="race"
            )
        finally:
            connections.close_all()

    ours = threading.Thread(target=our_create)
    ours.start()
    # Ours passed both "exists?" checks and now waits on the unique index for the winner's commit.
    with connections["default"].cursor() as cursor:

        def blocked() -> bool:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            return cursor.fetchone()[0] >= 1

        wait_for(blocked, timeout=30, what="the second create to block on the unique index")
    release.set()
    thread.join(30)
    ours.join(30)
    response = result["response"]
    assert response.status_code == 200, response.content
    assert response.json()["id"] == winner["job"].pk
    assert Job.objects.filter(owner=alice).count() == 1


def test_json_error_shape_is_documented_in_docs(as_alice):
    """Errors are {field: [messages]}: a client can show each next to its field."""
    response = as_alice.post("/api/v1/jobs/", {"kind": "python"}, format="json")
    body = response.json()
    assert response.status_code == 400
    assert body["name"] == ["This field is required."]
    assert all(isinstance(v, list) for v in body.values()), json.dumps(body)


def test_execution_status_of_run_respects_forbid_policy(as_alice, node):
    job = as_alice.post(
        "/api/v1/jobs/", job_body(schedule=None, concurrency_policy="forbid"), format="json"
    ).json()
    first = as_alice.post(f"/api/v1/jobs/{job['id']}/run/").json()
    second = as_alice.post(f"/api/v1/jobs/{job['id']}/run/").json()
    assert first["status"] == "queued"
    assert second["status"] == Execution.Status.SKIPPED


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        ({"type": "once", "at": "2869-01-30T05:47:49.92-16:29"}, None),  # PostgreSQL stores offsets < 16h
        (
            {"type": "interval", "every_seconds": 5, "start_at": "9999-12-31T23:59:59-10:00"},
            "schedule.start_at",
        ),
        ({"type": "once", "at": "2030-02-30T00:00:00Z"}, "schedule.at"),
    ],
)
def test_datetimes_postgres_cannot_store_are_not_500(as_alice, schedule, field):
    response = as_alice.post("/api/v1/jobs/", job_body(schedule=schedule), format="json")
    if field is None:
        assert response.status_code == 201, response.content
        assert response.json()["schedule"]["at"] == "2869-01-30T22:16:49.920000Z"
    else:
        assert response.status_code == 400, response.content
        assert field in response.json()


def test_names_that_are_no_field_are_a_400_naming_them(db, make_user) -> None:
    api = token_client(make_user("una", "submitter"))
    base = {"name": "x", "kind": "python", "payload": {"handler": "echo"}}
    for body, field in (
        ({**base, "memory_mb": 64}, "memory_mb"),  # meant: resources.memory_mb
        ({**base, "resources": {"memory": 64}}, "memory"),
        ({**base, "schedule": {"type": "cron", "cron": "* * * * *"}}, "cron"),
    ):
        response = api.post("/api/v1/jobs/", body, format="json")
        assert response.status_code == 400, response.json()
        assert field in str(response.json())
    assert not Job.objects.filter(name="x").exists()
    # What a GET returned may be sent back: read-only fields are ignored.
    created = api.post("/api/v1/jobs/", base, format="json").json()
    sent_back = {k: v for k, v in created.items() if k != "schedule"}
    again = api.patch(f"/api/v1/jobs/{created['id']}/", {**sent_back, "name": "y"}, format="json")
    assert again.status_code == 200, again.json()
