"""Bad job input is refused naming the field, and nothing is half-created."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.models import Job, JobSchedule
from jobs.services import job_create
from tests.factories import NodeFactory, UserFactory

pytestmark = pytest.mark.django_db

ECHO = {"handler": "echo", "kwargs": {"message": "hi"}}


def _refused(field: str, **kwargs) -> str:
    user = kwargs.pop("owner", None) or UserFactory()
    data = {"owner": user, "name": "j", "kind": "python", "payload": ECHO, **kwargs}
    with pytest.raises(ValidationError) as info:
        job_create(**data)
    assert field in info.value.message_dict, info.value.message_dict
    assert Job.objects.count() == 0
    assert JobSchedule.objects.count() == 0
    assert PeriodicTask.objects.filter(name__startswith="job:").count() == 0
    return info.value.message_dict[field][0]


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("kind", {"kind": "ftp"}),
        ("payload.handler", {"payload": {"handler": "nope"}}),
        ("payload.kwargs", {"payload": {"handler": "sleep", "kwargs": {"bogus": 1}}}),
        ("payload", {"payload": {"handler": "echo", "extra": 1}}),
        ("priority", {"priority": 10}),
        ("priority", {"priority": -1}),
        ("name", {"name": "   "}),
        ("timeout_seconds", {"timeout_seconds": 0}),
        ("max_retries", {"max_retries": 101}),
        ("cpu", {"cpu": "-1"}),
        ("concurrency_policy", {"concurrency_policy": "sometimes"}),
        ("misfire_policy", {"misfire_policy": "maybe"}),
        ("retry_backoff_max_seconds", {"retry_backoff_seconds": 100, "retry_backoff_max_seconds": 10}),
        ("schedule.type", {"schedule": {"type": "weekly"}}),
        ("schedule.cron_expression", {"schedule": {"type": "cron", "cron_expression": "61 * * * *"}}),
        ("schedule.cron_expression", {"schedule": {"type": "cron", "cron_expression": "* * * *"}}),
        ("schedule.cron_expression", {"schedule": {"type": "cron", "cron_expression": "@hourly"}}),
        (
            "schedule.timezone",
            {"schedule": {"type": "cron", "cron_expression": "0 * * * *", "timezone": "Mars/Base"}},
        ),
        ("schedule.every_seconds", {"schedule": {"type": "interval", "every_seconds": -5}}),
        ("schedule.every_seconds", {"schedule": {"type": "interval", "every_seconds": 0}}),
        ("schedule.every_seconds", {"schedule": {"type": "interval"}}),
        ("schedule.run_at", {"schedule": {"type": "once", "run_at": "2001-01-01T00:00:00Z"}}),
        # Naive, in a zone west of UTC: past year 9999 once converted, which PostgreSQL cannot store.
        (
            "schedule.end_at",
            {
                "schedule": {
                    "type": "cron",
                    "cron_expression": "0 * * * *",
                    "timezone": "America/Los_Angeles",
                    "end_at": "9999-12-31T23:00:00",
                }
            },
        ),
        ("schedule.run_at", {"schedule": {"type": "once", "run_at": "tomorrow"}}),
        ("schedule.run_at", {"schedule": {"type": "once"}}),
        ("schedule.max_runs", {"schedule": {"type": "interval", "every_seconds": 5, "max_runs": 0}}),
        ("schedule", {"schedule": {"type": "interval", "every_seconds": 5, "color": "red"}}),
    ],
)
def test_bad_input_is_refused_naming_the_field(field, kwargs):
    _refused(field, **kwargs)


def test_end_before_start_is_refused():
    start = timezone.now() + timedelta(days=2)
    message = _refused(
        "schedule.end_at",
        schedule={
            "type": "interval",
            "every_seconds": 5,
            "start_at": start,
            "end_at": start - timedelta(hours=1),
        },
    )
    assert "after start_at" in message


def test_shell_payload_errors(shell_user):
    assert "non-empty" in _refused("payload.command", owner=shell_user, kind="shell", payload={"command": []})
    _refused("payload.command", owner=shell_user, kind="shell", payload={"command": "echo hi"})
    _refused("payload.env", owner=shell_user, kind="shell", payload={"command": ["true"], "env": {"A": 1}})
    _refused("payload.cwd", owner=shell_user, kind="shell", payload={"command": ["true"], "cwd": "relative"})


def test_http_payload_errors():
    _refused("payload.url", kind="http", payload={"url": "ftp://example.com/"})
    _refused("payload.url", kind="http", payload={"url": "http://169.254.169.254/latest/meta-data"})
    _refused("payload.url", kind="http", payload={"url": "http://127.0.0.1:8000/"})
    _refused("payload.method", kind="http", payload={"url": "https://example.com/", "method": "BREW"})
    _refused(
        "payload.expect_status", kind="http", payload={"url": "https://example.com/", "expect_status": [99]}
    )
    _refused(
        "payload.headers", kind="http", payload={"url": "https://example.com/", "headers": {"a": "b\nc"}}
    )


def test_several_errors_are_reported_together():
    user = UserFactory()
    with pytest.raises(ValidationError) as info:
        job_create(
            owner=user,
            name="j",
            kind="python",
            payload={"handler": "nope"},
            priority=42,
            schedule={"type": "cron", "cron_expression": "bad"},
        )
    assert {"payload.handler", "priority", "schedule.cron_expression"} <= set(info.value.message_dict)


def test_shell_jobs_need_the_permission():
    with pytest.raises(PermissionDenied, match="run_shell"):
        job_create(owner=UserFactory(), name="j", kind="shell", payload={"command": ["true"]})
    assert Job.objects.count() == 0


def test_shell_jobs_can_be_disabled(shell_user, settings):
    settings.SCHEDULER_ALLOW_SHELL_JOBS = False
    with pytest.raises(PermissionDenied, match="disabled"):
        job_create(owner=shell_user, name="j", kind="shell", payload={"command": ["true"]})


def test_a_job_no_node_could_ever_hold_is_accepted_by_default():
    NodeFactory(cpu_capacity=2, memory_mb_capacity=1024, labels={"region": "eu"})
    owner = UserFactory()
    for resources in ({"node_selector": {"region": "us"}}, {"cpu": "8"}, {"memory_mb": 4096}):
        job = job_create(owner=owner, name="j", kind="python", payload=ECHO, **resources)
        assert job.pk  # an autoscaler may add a node that fits: the job waits pending for it


def test_a_job_no_node_could_ever_hold_is_refused_when_so_configured(settings):
    settings.SCHEDULER_REFUSE_UNPLACEABLE_JOBS = True
    NodeFactory(cpu_capacity=2, memory_mb_capacity=1024, labels={"region": "eu"})
    assert "labels" in _refused("node_selector", node_selector={"region": "us"})
    _refused("cpu", cpu="8")
    _refused("memory_mb", memory_mb=4096)


def test_no_node_yet_is_not_an_error(settings):
    settings.SCHEDULER_REFUSE_UNPLACEABLE_JOBS = True
    job = job_create(owner=UserFactory(), name="j", kind="python", payload=ECHO, cpu="64")
    assert job.pk


def test_valid_job_creates_job_schedule_and_periodic_task():
    user = UserFactory()
    job = job_create(
        owner=user,
        name="nightly",
        kind="python",
        payload=ECHO,
        priority=9,
        schedule={"type": "cron", "cron_expression": "30 2 * * *", "timezone": "Europe/Berlin"},
    )
    task = PeriodicTask.objects.get(name=f"job:{job.pk}")
    assert task.task == "jobs.fire"
    assert task.enabled
    assert str(task.crontab.timezone) == "Europe/Berlin"
    assert task.crontab.minute == "30"
    assert job.schedule.periodic_task == task
    assert job.schedule.next_run_at > timezone.now()


def test_idempotency_key_returns_the_same_job():
    user = UserFactory()
    first = job_create(owner=user, name="a", kind="python", payload=ECHO, idempotency_key="k1")
    again = job_create(owner=user, name="a", kind="python", payload=ECHO, idempotency_key="k1")
    assert first.pk == again.pk
    assert Job.objects.count() == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"handler": "echo", "kwargs": {"message": "nul \x00 inside"}},
        {"handler": "echo", "kwargs": {"message": "x" * 3_000_000}},
    ],
    ids=["nul-character", "oversized"],
)
def test_payload_postgres_cannot_store_or_too_big_is_refused_by_the_service(payload):
    # The admin and manage.py reach job_create without the API's parser: the service itself refuses.
    message = _refused("payload", payload=payload)
    assert "NUL" in message or "bytes as JSON" in message
