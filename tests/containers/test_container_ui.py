"""A container run's end cause, peak memory and CPU seconds in the admin, the dashboard and alerts (no
engine needed: the executions are made directly, as the container executor records them)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from jobs.models import DeadLetter, Execution, Job
from monitoring.models import Alert, AlertRule
from monitoring.services import alert_rule_create, alerts_evaluate
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db

OOM_ERROR = "killed: out of memory (limit 64 MB)"


@pytest.fixture(autouse=True)
def _fresh_dashboard(settings: Any) -> None:
    settings.SCHEDULER_METRICS_CACHE_SECONDS = 0  # the dashboard reads the database on every request
    cache.clear()


@pytest.fixture
def admin_client(client: Client) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


def _container_job(**fields: Any) -> Any:
    payload = {"image": "busybox:1.36", "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M"]}
    return JobFactory(kind=Job.Kind.CONTAINER, payload=payload, memory_mb=64, **fields)


def _execution(job: Any, status: str = Execution.Status.FAILED, **fields: Any) -> Execution:
    now = timezone.now()
    return Execution.objects.create(
        job=job,
        scheduled_for=now + timedelta(microseconds=Execution.objects.count()),
        status=status,
        started_at=now - timedelta(seconds=2),
        finished_at=now,
        **fields,
    )


def _oom(job: Any, status: str = Execution.Status.FAILED) -> Execution:
    return _execution(
        job,
        status,
        exit_code=137,
        end_cause=Execution.EndCause.OOM_KILLED,
        error=OOM_ERROR,
        memory_peak_bytes=64 * 2**20,
        cpu_seconds=0.42,
    )


def _changelist_ids(page: Any) -> set[int]:
    return {row.pk for row in page.context["cl"].result_list}


def test_admin_changelist_filters_on_the_end_cause(admin_client: Client) -> None:
    job = _container_job()
    oom = _oom(job)
    plain = _execution(job, exit_code=3, end_cause=Execution.EndCause.EXITED, error="exited with code 3")
    timed_out = _execution(job, Execution.Status.TIMED_OUT, exit_code=137, end_cause="timed_out")
    unset = _execution(JobFactory(), Execution.Status.SUCCEEDED)
    url = reverse("admin:jobs_execution_changelist")

    everything = admin_client.get(url)
    assert everything.status_code == 200
    assert _changelist_ids(everything) == {oom.pk, plain.pk, timed_out.pk, unset.pk}
    assert "out of memory" in everything.content.decode()  # the column, in words

    page = admin_client.get(url, {"end_cause": "oom_killed"})
    assert page.status_code == 200
    assert _changelist_ids(page) == {oom.pk}  # never confused with the timeout's exit 137
    assert _changelist_ids(admin_client.get(url, {"end_cause": "timed_out"})) == {timed_out.pk}
    assert _changelist_ids(admin_client.get(url, {"end_cause": "none"})) == {unset.pk}


def test_admin_detail_shows_the_cause_peak_memory_and_cpu_seconds(admin_client: Client) -> None:
    oom = _oom(_container_job())
    page = admin_client.get(reverse("admin:jobs_execution_change", args=[oom.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "End cause" in html
    assert "out of memory" in html
    assert OOM_ERROR in html
    assert "64.0 MB of 64 MB" in html  # peak against the job's memory_mb, readable
    assert "0.42 s" in html
    plain = _execution(JobFactory(), Execution.Status.SUCCEEDED)
    html = admin_client.get(reverse("admin:jobs_execution_change", args=[plain.pk])).content.decode()
    assert "Peak memory" in html  # shown as "-" when the executor measured nothing
    assert "out of memory" not in html


def test_admin_job_form_takes_a_container_job_and_names_a_bad_payload_field(admin_client: Client) -> None:
    form = {
        "name": "in a container",
        "description": "",
        "kind": "container",
        "payload": json.dumps({"image": "busybox:1.36", "command": ["echo", "hi"], "network": "none"}),
        "priority": 5,
        "cpu": "0.5",
        "memory_mb": 64,
        "node_selector": "{}",
        "timeout_seconds": 60,
        "max_retries": 0,
        "retry_backoff_seconds": 10,
        "retry_backoff_max_seconds": 60,
        "retry_jitter": "on",
        "concurrency_policy": "allow",
        "misfire_policy": "run_once",
        "schedule_type": "none",
        "timezone": "UTC",
        "executions-TOTAL_FORMS": 0,
        "executions-INITIAL_FORMS": 0,
    }
    user = get_user_model().objects.get(username="root")
    response = admin_client.post(reverse("admin:jobs_job_add"), {**form, "owner": user.pk})
    assert response.status_code == 302, response.content.decode()[-3000:]
    job = Job.objects.get(name="in a container")
    assert job.kind == "container"
    assert job.payload["image"] == "busybox:1.36"

    bad = {**form, "name": "bad image", "owner": user.pk, "payload": json.dumps({"image": "Not An Image"})}
    response = admin_client.post(reverse("admin:jobs_job_add"), bad)
    assert response.status_code == 200
    assert "payload.image" in response.content.decode()
    assert not Job.objects.filter(name="bad image").exists()


def test_dashboard_shows_the_out_of_memory_cause(make_user: Any) -> None:
    alice = make_user("alice", "submitter")
    job = _container_job(owner=alice, name="memory-hog")
    oom = _oom(job)
    _execution(JobFactory(owner=alice, name="plain-failure"), error="boom")
    client = Client()
    client.force_login(alice)
    for url in ("/dashboard/", "/dashboard/fragment/"):
        html = client.get(url).content.decode()
        assert f"#{oom.pk}" in html
        assert 'class="cause cause-oom_killed"' in html
        assert "out of memory" in html
        assert "64.0 MB of 64 MB" in html
        assert "0.42 s CPU" in html
    # The plain failure has no cause badge: one badge on the page, the OOM kill's.
    assert html.count('class="cause ') == 1


def _alerted_executions(rule: AlertRule) -> set[int]:
    return {alert.details["execution_id"] for alert in Alert.objects.filter(rule=rule)}


def test_an_end_causes_rule_fires_for_an_oom_kill_and_not_for_a_plain_failure() -> None:
    job = _container_job(name="memory-hog")
    oom_only = alert_rule_create(name="oom", kind="execution_failed", params={"end_causes": ["oom_killed"]})
    every = alert_rule_create(name="all failures", kind="execution_failed")
    assert oom_only.params == {"window_seconds": 3600, "end_causes": ["oom_killed"]}
    assert every.params == {"window_seconds": 3600}  # absent: every failure, as before
    plain = _execution(job, exit_code=3, end_cause="exited", error="exited with code 3")
    retried = _oom(job, Execution.Status.RETRYING)  # an OOM kill that will be retried counts too
    alerts_evaluate()
    assert _alerted_executions(oom_only) == {retried.pk}
    assert _alerted_executions(every) == {plain.pk, retried.pk}
    alert = Alert.objects.get(rule=oom_only)
    assert alert.details["end_cause"] == "oom_killed"
    assert alert.details["memory_peak_bytes"] == 64 * 2**20
    assert alert.details["cpu_seconds"] == 0.42
    assert "(oom_killed)" in alert.summary
    assert OOM_ERROR in alert.summary
    plain_alert = Alert.objects.get(rule=every, details__execution_id=plain.pk)
    assert plain_alert.details["end_cause"] == "exited"


def test_an_execution_dead_alert_carries_the_end_cause() -> None:
    rule = alert_rule_create(name="dead", kind="execution_dead")  # watches from its creation on
    job = _container_job()
    dead = _oom(job, Execution.Status.DEAD)
    DeadLetter.objects.create(job=job, execution=dead, error=OOM_ERROR)
    alerts_evaluate()
    alert = Alert.objects.get(rule=rule)
    assert alert.details["end_cause"] == "oom_killed"
    assert "is dead (oom_killed)" in alert.summary


@pytest.mark.parametrize("end_causes", [["oom_killed", "nope"], [], "oom_killed", [1], {"oom_killed": 1}])
def test_a_rule_with_a_bad_end_cause_is_refused_naming_the_field(end_causes: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        alert_rule_create(name="bad", kind="execution_failed", params={"end_causes": end_causes})
    assert "params.end_causes" in excinfo.value.message_dict
    assert not AlertRule.objects.exists()


def test_the_api_refuses_an_unknown_end_cause_with_a_400_naming_the_field(make_user: Any) -> None:
    client = APIClient()
    client.force_login(make_user("olga", "operator"))
    body = {"name": "oom", "kind": "execution_failed", "channel": "log", "params": {"end_causes": ["oom"]}}
    response = client.post("/api/v1/alert-rules/", body, format="json")
    assert response.status_code == 400, response.content
    assert "params.end_causes" in response.json()
    assert "'oom'" in response.json()["params.end_causes"][0]
    assert "oom_killed" in response.json()["params.end_causes"][0]
    body["params"] = {"end_causes": ["oom_killed", "oom_killed"]}
    response = client.post("/api/v1/alert-rules/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["params"] == {"window_seconds": 3600, "end_causes": ["oom_killed"]}


def test_the_admin_rule_form_refuses_an_unknown_end_cause_naming_the_field(admin_client: Client) -> None:
    form = {"name": "oom", "kind": "execution_failed", "channel": "log", "target": "", "enabled": "on"}
    url = reverse("admin:monitoring_alertrule_add")
    response = admin_client.post(url, {**form, "params": json.dumps({"end_causes": ["nope"]})})
    assert response.status_code == 200
    assert "params.end_causes" in response.content.decode()
    assert not AlertRule.objects.exists()
    response = admin_client.post(url, {**form, "params": json.dumps({"end_causes": ["oom_killed"]})})
    assert response.status_code == 302, response.content.decode()[-3000:]
    rule = AlertRule.objects.get()
    assert rule.params == {"window_seconds": 3600, "end_causes": ["oom_killed"]}
    assert rule.created_by is not None
    assert rule.created_by.username == "root"
