"""With real celery workers: /readyz follows the worker, metrics and alerts after real executions."""

from __future__ import annotations

import pytest
from celery import current_app
from django.test import Client

from jobs.beat.lease import LeaderLease, redis_client
from jobs.models import Execution
from jobs.services import job_trigger
from monitoring.models import AlertDelivery
from monitoring.services import alert_rule_create
from nodes.models import Node
from tests.conftest import wait_for
from tests.factories import JobFactory
from tests.monitoring.test_metrics import TOKEN, scrape, value

pytestmark = pytest.mark.integration

NAME = "mw1@testhost"
FAST = {
    "SCHEDULER_HEARTBEAT_SECONDS": "1",
    "SCHEDULER_NODE_CPU": "4",
    "SCHEDULER_NODE_MEMORY_MB": "4096",
    "SCHEDULER_HTTP_ALLOWLIST": "127.0.0.1",
}


def _online(proc) -> None:
    wait_for(
        lambda: Node.objects.filter(name=NAME, status=Node.Status.ONLINE).exists(),
        timeout=90,
        what=f"node {NAME} online; log:\n{proc.log()[-3000:]}",
    )


def _ready(client: Client) -> tuple[int, dict]:
    response = client.get("/readyz")
    return response.status_code, {name: check["ok"] for name, check in response.json()["checks"].items()}


def test_readyz_turns_503_when_the_worker_stops_and_200_when_it_returns(start_worker, settings):
    settings.SCHEDULER_NODE_OFFLINE_AFTER_SECONDS = 4  # a silent node counts as gone after 4 s
    lease = LeaderLease(client=redis_client(), seconds=30)  # the beat leader's real lease, held here
    assert lease.hold()
    client = Client()
    assert _ready(client) == (503, {"database": True, "broker": True, "workers": False, "beat": True})
    worker = start_worker(name=NAME, concurrency=1, **FAST)
    _online(worker)
    wait_for(lambda: _ready(client)[0] == 200, timeout=30, what="/readyz 200 with the worker up")
    worker.kill_group()  # SIGKILL: no goodbye, the heartbeats just stop
    status, checks = wait_for(lambda: (r := _ready(client))[0] == 503 and r, timeout=30, what="/readyz 503")
    assert checks == {"database": True, "broker": True, "workers": False, "beat": True}
    worker = start_worker(name=NAME, concurrency=1, **FAST)
    wait_for(
        lambda: _ready(client)[0] == 200, timeout=90, what=f"/readyz 200 again; log:\n{worker.log()[-3000:]}"
    )
    lease.release()
    assert _ready(client) == (503, {"database": True, "broker": True, "workers": True, "beat": False})
    assert Client().get("/healthz").status_code == 200  # liveness does not depend on workers or beat


def test_metrics_and_an_alert_after_real_executions(start_worker, settings, webhook):
    settings.SCHEDULER_METRICS_TOKEN = TOKEN
    settings.SCHEDULER_METRICS_CACHE_SECONDS = 0
    worker = start_worker(name=NAME, concurrency=2, **FAST)
    _online(worker)
    ok = JobFactory(payload={"handler": "sleep", "kwargs": {"seconds": 0.3}})
    bad = JobFactory(payload={"handler": "fail", "kwargs": {"message": "kaput"}})
    rule = alert_rule_create(name="failures", kind="execution_failed", channel="webhook", target=webhook.url)
    job_trigger(job=ok)
    failed = job_trigger(job=bad)
    finished = Execution.objects.filter(finished_at__isnull=False)
    wait_for(
        lambda: finished.count() == 2, timeout=60, what=f"two finished runs; log:\n{worker.log()[-3000:]}"
    )
    m = scrape()
    assert value(m, "scheduler_executions", status="succeeded") == 1
    assert value(m, "scheduler_executions", status="dead") == 1  # no retries: dead at once
    assert value(m, "scheduler_dead_letters", status="open") == 1
    duration = "scheduler_execution_duration_seconds"
    assert value(m, duration, f"{duration}_count") == 2
    assert value(m, duration, f"{duration}_bucket", le="0.1") <= 1  # the sleep took at least 0.3 s
    assert value(m, "scheduler_nodes", status="online") == 1
    node = {"node": NAME, "status": "online"}
    assert value(m, "scheduler_node_cpu_capacity_cores", **node) == 4
    assert value(m, "scheduler_node_memory_capacity_bytes", **node) == 4096 * 1024 * 1024
    assert value(m, "scheduler_node_cpu_allocated_cores", **node) == 0  # both released
    assert value(m, "scheduler_queue_depth", queue=f"node.{NAME}") == 0
    # The evaluator task, run by the real worker as beat would send it, delivers to the local receiver.
    current_app.send_task("monitoring.evaluate_alerts")
    wait_for(lambda: webhook.events(), timeout=60, what=f"the alert webhook; log:\n{worker.log()[-3000:]}")
    current_app.send_task("monitoring.evaluate_alerts")
    wait_for(
        lambda: (
            AlertDelivery.objects.filter(alert__rule=rule).count() == 1
            and not AlertDelivery.objects.exclude(status="sent").exists()
        ),
        timeout=30,
        what="one sent delivery",
    )
    assert webhook.events() == [("fired", f"execution:{failed.pk}")]
