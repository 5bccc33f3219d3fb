"""/metrics (Prometheus text, parsed by prometheus-client's parser) and /api/v1/metrics/: every family."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import DeadLetter, Execution, Job
from nodes.models import Node, ResourceAllocation
from tests.factories import JobFactory, NodeFactory

TOKEN = "metrics-token-for-tests"
FAMILIES = {
    "scheduler_jobs",
    "scheduler_executions",
    "scheduler_executions_pending",
    "scheduler_pending_oldest_seconds",
    "scheduler_execution_duration_seconds",
    "scheduler_firing_lateness_seconds",
    "scheduler_queue_depth",
    "scheduler_broker_up",
    "scheduler_nodes",
    "scheduler_node_cpu_capacity_cores",
    "scheduler_node_cpu_allocated_cores",
    "scheduler_node_cpu_used_cores",
    "scheduler_node_memory_capacity_bytes",
    "scheduler_node_memory_allocated_bytes",
    "scheduler_node_memory_used_bytes",
    "scheduler_node_running_executions",
    "scheduler_dead_letters",
    "scheduler_alerts_firing",
    "scheduler_beat_leader_up",
}


def scrape(client: Client | None = None, token: str | None = TOKEN) -> dict[str, dict[tuple, float]]:
    """GET /metrics and parse it: {family: {(sample name, sorted labels): value}}."""
    client = client or Client()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    parsed: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        samples = parsed.setdefault(family.name, {})
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


def value(metrics: dict, family: str, sample: str | None = None, **labels: str) -> float:
    return metrics[family][(sample or family, tuple(sorted(labels.items())))]


def _finished(job: Job, status: str, seconds: float, *, late: float = 0.0) -> Execution:
    now = timezone.now()
    return Execution.objects.create(
        job=job,
        scheduled_for=now - timedelta(seconds=late),
        status=status,
        started_at=now - timedelta(seconds=seconds),
        finished_at=now,
        trigger=Execution.Trigger.SCHEDULE if late else Execution.Trigger.MANUAL,
    )


@pytest.fixture
def cluster(db, redis_client):
    """Rows for every family: jobs, executions in many states, nodes, allocations, queues, dead letters."""
    job = JobFactory()
    JobFactory(status=Job.Status.PAUSED)
    online = NodeFactory(name="n1@h", cpu_capacity=Decimal(4), memory_mb_capacity=4096, cpu_percent=25.0,
                         memory_used_mb=512, last_heartbeat_at=timezone.now())  # fmt: skip
    NodeFactory(name="n2@h", status=Node.Status.OFFLINE)
    _finished(job, Execution.Status.SUCCEEDED, 0.3, late=3.0)
    _finished(job, Execution.Status.FAILED, 2.0)
    dead = _finished(job, Execution.Status.DEAD, 20.0)
    DeadLetter.objects.create(job=job, execution=dead, error="boom")
    running = Execution.objects.create(job=job, scheduled_for=timezone.now(), status=Execution.Status.RUNNING,
                                       node=online, started_at=timezone.now(), trigger="manual")  # fmt: skip
    ResourceAllocation.objects.create(node=online, execution=running, cpu=Decimal("0.5"), memory_mb=256)
    pending = Execution.objects.create(job=job, scheduled_for=timezone.now(), trigger="manual")
    Execution.objects.filter(pk=pending.pk).update(created_at=timezone.now() - timedelta(seconds=90))
    redis_client.rpush("default", "m1", "m2")
    redis_client.rpush("node.n1@h:5", "m3")  # a priority sub-queue of the node's queue
    return job


def test_every_family_with_values_from_the_database_and_broker(cluster, settings):
    settings.SCHEDULER_METRICS_TOKEN = TOKEN
    m = scrape()
    assert set(m) >= FAMILIES, FAMILIES - set(m)
    assert value(m, "scheduler_jobs", status="active") == 1
    assert value(m, "scheduler_jobs", status="paused") == 1
    assert value(m, "scheduler_executions", status="succeeded") == 1
    assert value(m, "scheduler_executions", status="failed") == 1
    assert value(m, "scheduler_executions", status="dead") == 1
    assert value(m, "scheduler_executions", status="running") == 1
    assert value(m, "scheduler_executions", status="lost") == 0
    assert value(m, "scheduler_executions_pending") == 1
    assert value(m, "scheduler_pending_oldest_seconds") >= 90
    duration = "scheduler_execution_duration_seconds"
    assert value(m, duration, f"{duration}_count") == 3
    assert value(m, duration, f"{duration}_bucket", le="0.5") == 1
    assert value(m, duration, f"{duration}_bucket", le="2.5") == 2
    assert value(m, duration, f"{duration}_bucket", le="10.0") == 2
    assert value(m, duration, f"{duration}_bucket", le="30.0") == 3
    assert value(m, duration, f"{duration}_bucket", le="+Inf") == 3
    assert value(m, duration, f"{duration}_sum") == pytest.approx(22.3, abs=0.05)
    lateness = "scheduler_firing_lateness_seconds"
    assert value(m, lateness, f"{lateness}_count") == 1
    assert value(m, lateness, f"{lateness}_bucket", le="2.5") == 0
    assert value(m, lateness, f"{lateness}_bucket", le="5.0") == 1
    assert value(m, "scheduler_queue_depth", queue="default") == 2
    assert value(m, "scheduler_queue_depth", queue="node.n1@h") == 1
    assert value(m, "scheduler_queue_depth", queue="dead_letter") == 0
    assert value(m, "scheduler_broker_up") == 1
    assert value(m, "scheduler_nodes", status="online") == 1
    assert value(m, "scheduler_nodes", status="offline") == 1
    node = {"node": "n1@h", "status": "online"}
    assert value(m, "scheduler_node_cpu_capacity_cores", **node) == 4
    assert value(m, "scheduler_node_cpu_allocated_cores", **node) == 0.5
    assert value(m, "scheduler_node_cpu_used_cores", **node) == 1.0
    assert value(m, "scheduler_node_memory_capacity_bytes", **node) == 4096 * 1024 * 1024
    assert value(m, "scheduler_node_memory_allocated_bytes", **node) == 256 * 1024 * 1024
    assert value(m, "scheduler_node_memory_used_bytes", **node) == 512 * 1024 * 1024
    assert value(m, "scheduler_node_running_executions", **node) == 1
    assert value(m, "scheduler_dead_letters", status="open") == 1
    assert value(m, "scheduler_alerts_firing") == 0
    assert value(m, "scheduler_beat_leader_up") == 0


def test_metrics_need_the_token_or_an_operator_session(cluster, settings, make_user):
    settings.SCHEDULER_METRICS_TOKEN = TOKEN
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    viewer = Client()
    viewer.force_login(make_user("viewer", "viewer"))
    assert viewer.get("/metrics").status_code == 401
    operator = Client()
    operator.force_login(make_user("op", "operator"))
    assert value(scrape(operator, token=None), "scheduler_jobs", status="active") == 1
    settings.SCHEDULER_METRICS_TOKEN = ""  # no token configured: a bearer header never opens it
    assert Client().get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_json_summary_matches_and_is_cached_for_a_few_seconds(cluster, settings, make_user, client_for):
    settings.SCHEDULER_METRICS_CACHE_SECONDS = 60
    api = client_for(make_user("op", "operator"))
    summary = api.get("/api/v1/metrics/").json()
    assert summary["jobs_by_status"]["active"] == 1
    assert summary["executions_by_status"]["succeeded"] == 1
    assert summary["queues"]["default"] == 2
    assert summary["duration_seconds"]["count"] == 3
    assert [n["name"] for n in summary["nodes"]] == ["n1@h", "n2@h"]
    JobFactory()  # within the cache lifetime every viewer gets the same numbers
    assert api.get("/api/v1/metrics/").json()["jobs_by_status"]["active"] == 1
    cache.clear()
    assert api.get("/api/v1/metrics/").json()["jobs_by_status"]["active"] == 2
    assert client_for(make_user("viewer", "viewer")).get("/api/v1/metrics/").status_code == 403
