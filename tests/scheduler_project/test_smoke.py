"""The foundation: a real worker answers through Redis, health reports its dependencies, migrations match."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.core.management import call_command

from scheduler_project.celery import app
from tests.conftest import ROOT, subprocess_env, wait_for


@pytest.mark.integration
def test_real_worker_answers_ping_task_through_redis(start_worker):
    worker = start_worker("smoke@testhost", concurrency=1)
    wait_for(lambda: app.control.ping(destination=["smoke@testhost"], timeout=1), 90, what="worker ping")
    result = app.send_task("monitoring.ping", ignore_result=False)
    # The task's answer travels back through Redis (rpc-less: the worker logs it as succeeded).
    wait_for(lambda: f"Task monitoring.ping[{result.id}] succeeded" in worker.log(), 60, what="ping task")
    assert "'pong'" in worker.log()


def test_healthz_reports_database_and_broker(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True


def test_healthz_is_503_when_the_broker_is_down(client, db, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def test_migrations_are_complete(db):
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


PROD_ENV = {
    "SCHEDULER_ENVIRONMENT": "production",
    "DEBUG": "0",
    "SECRET_KEY": "k3J9v-0tQz8mWq2Lr7Yx4Nc6Bh1Pd5Sf9Gj0Hk8Lm3Nz2Qw7Er4Ty6Ui1Op5As",
    "ALLOWED_HOSTS": "scheduler.example.com",
}


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_in_production():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", **PROD_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"DEBUG": "1"}, "DEBUG must be off"),
        ({"SECRET_KEY": ""}, "SECRET_KEY must be set"),
        ({"SECRET_KEY": "django-insecure-" + "x" * 60}, "SECRET_KEY must be set"),
    ],
)
def test_production_refuses_to_start_insecure(override, message):
    result = _manage("check", **{**PROD_ENV, **override})
    assert result.returncode != 0
    assert message in result.stderr
