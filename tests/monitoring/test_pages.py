"""`manage.py status`, the dashboard's access rules and links, and Flower's task events."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from jobs.models import Execution
from tests.factories import JobFactory, NodeFactory

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_status_prints_jobs_nodes_queues_and_recent_failures(redis_client):
    job = JobFactory(name="nightly")
    NodeFactory(name="w9@box")
    Execution.objects.create(job=job, scheduled_for=timezone.now(), status="failed", error="exit 3\nmore",
                             finished_at=timezone.now())  # fmt: skip
    redis_client.rpush("default", "m")
    out = StringIO()
    call_command("status", stdout=out)
    text = out.getvalue()
    assert "jobs:        active 1" in text
    assert "executions:  failed 1" in text
    assert "w9@box" in text
    assert "online" in text
    assert "default 1" in text
    assert "node.w9@box 0" in text
    assert "NO LEADER" in text
    assert "nightly failed" in text
    assert "exit 3" in text
    assert "more" not in text


@pytest.mark.django_db
def test_dashboard_needs_a_login_and_scopes_jobs_to_their_owner(make_user):
    assert Client().get("/dashboard/").url.startswith("/dashboard/login/?next=/dashboard/")
    assert Client().get("/dashboard/fragment/").status_code == 302
    alice, bob = make_user("alice", "submitter"), make_user("bob", "submitter")
    Execution.objects.create(job=JobFactory(owner=alice, name="alices-job"), scheduled_for=timezone.now(),
                             status="failed", finished_at=timezone.now(), error="alice broke")  # fmt: skip
    client = Client()
    client.force_login(bob)
    page = client.get("/dashboard/fragment/").content.decode()
    assert "alice broke" not in page
    assert "(your jobs)" in page
    client.force_login(alice)
    assert "alice broke" in client.get("/dashboard/fragment/").content.decode()


@pytest.mark.django_db
def test_admin_links_the_dashboard_and_flower(make_user):
    client = Client()
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    page = client.get("/admin/").content.decode()
    assert 'href="/dashboard/"' in page
    assert settings.SCHEDULER_FLOWER_URL in page


def test_workers_send_task_events_for_flower():
    assert settings.CELERY_WORKER_SEND_TASK_EVENTS is True
    assert settings.CELERY_TASK_SEND_SENT_EVENT is True
    procfile = (ROOT / "Procfile").read_text()
    worker_line = next(line for line in procfile.splitlines() if line.startswith("worker:"))
    assert " -E " in f"{worker_line} "
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "-E" in compose["services"]["worker"]["command"]
