"""The admin: the job form saves through the services; actions call services."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from jobs.models import DeadLetter, Execution, Job
from jobs.services import execution_mark_lost, job_create, job_trigger

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    client.force_login(user)
    client.user = user
    return client


def _form(**overrides):
    data = {
        "name": "from admin",
        "description": "",
        "kind": "python",
        "payload": '{"handler": "echo"}',
        "priority": 5,
        "cpu": "0.1",
        "memory_mb": 64,
        "node_selector": "{}",
        "timeout_seconds": 60,
        "max_retries": 0,
        "retry_backoff_seconds": 10,
        "retry_backoff_max_seconds": 60,
        "retry_jitter": "on",
        "concurrency_policy": "allow",
        "misfire_policy": "run_once",
        "schedule_type": "interval",
        "every_seconds": 30,
        "timezone": "UTC",
        "executions-TOTAL_FORMS": 0,
        "executions-INITIAL_FORMS": 0,
    }
    data.update(overrides)
    return data


def test_add_job_through_the_form_creates_schedule_and_periodic_task(admin_client):
    response = admin_client.post(reverse("admin:jobs_job_add"), _form(owner=admin_client.user.pk))
    assert response.status_code == 302, response.content.decode()[-3000:]
    job = Job.objects.get(name="from admin")
    assert job.schedule.every_seconds == 30
    assert PeriodicTask.objects.get(name=f"job:{job.pk}").enabled


def test_bad_input_in_the_form_shows_the_field_error(admin_client):
    response = admin_client.post(
        reverse("admin:jobs_job_add"),
        _form(owner=admin_client.user.pk, schedule_type="cron", cron_expression="99 * * * *"),
    )
    assert response.status_code == 200
    assert "schedule.cron_expression" in response.content.decode()
    assert Job.objects.count() == 0


def test_edit_job_changes_the_schedule(admin_client):
    job = job_create(
        owner=admin_client.user,
        name="e",
        kind="python",
        payload={"handler": "echo"},
        schedule={"type": "interval", "every_seconds": 30},
    )
    response = admin_client.post(
        reverse("admin:jobs_job_change", args=[job.pk]),
        _form(
            owner=admin_client.user.pk,
            name="e",
            schedule_type="cron",
            cron_expression="0 4 * * *",
            timezone="Europe/Berlin",
        ),
    )
    assert response.status_code == 302, response.content.decode()[-3000:]
    task = PeriodicTask.objects.get(name=f"job:{job.pk}")
    assert task.crontab is not None
    assert str(task.crontab.timezone) == "Europe/Berlin"


def test_actions_pause_run_now_cancel_replay(admin_client, node):
    job = job_create(
        owner=admin_client.user,
        name="a",
        kind="python",
        payload={"handler": "echo"},
        schedule={"type": "interval", "every_seconds": 30},
    )
    url = reverse("admin:jobs_job_changelist")
    admin_client.post(url, {"action": "pause", "_selected_action": [job.pk]})
    assert Job.objects.get(pk=job.pk).status == "paused"
    admin_client.post(url, {"action": "resume", "_selected_action": [job.pk]})
    admin_client.post(url, {"action": "run_now", "_selected_action": [job.pk]})
    execution = Execution.objects.get(job=job)
    admin_client.post(
        reverse("admin:jobs_execution_changelist"), {"action": "cancel", "_selected_action": [execution.pk]}
    )
    assert Execution.objects.get(pk=execution.pk).status == "cancelled"
    failed = job_trigger(job=job)
    execution_mark_lost(execution_id=failed.pk, reason="gone")
    dead = DeadLetter.objects.get()
    admin_client.post(
        reverse("admin:jobs_deadletter_changelist"), {"action": "replay", "_selected_action": [dead.pk]}
    )
    assert Execution.objects.filter(replay_of=failed).exists()
    page = admin_client.get(reverse("admin:jobs_execution_change", args=[execution.pk]))
    assert page.status_code == 200
    for name in ("jobs_job", "jobs_execution", "jobs_jobschedule", "jobs_jobretry", "jobs_deadletter"):
        assert admin_client.get(reverse(f"admin:{name}_changelist")).status_code == 200
