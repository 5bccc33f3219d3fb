"""Many workers on "different hosts": placement under load, node death, late capacity, drain, broker loss.

Every test runs real `celery worker` processes (each one a node, NAME@HOST, with its own capacity and labels
given by environment) and, where sweeps are needed, a real `celery beat` with the stock scheduler reading
CELERY_BEAT_SCHEDULE (the reaper, the reconciler, the retry and pending sweeps), against PostgreSQL and Redis.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
from celery import current_app
from django.core.management import call_command
from django.db import close_old_connections, connection

from jobs.models import Execution, Job
from jobs.services import job_create, job_trigger
from nodes.models import Node, ResourceAllocation
from nodes.placement import node_queue_name
from nodes.selectors import node_overcommit_peaks
from tests.conftest import wait_for
from tests.factories import UserFactory

pytestmark = pytest.mark.integration

FAST = {
    "SCHEDULER_HEARTBEAT_SECONDS": "0.5",
    "SCHEDULER_NODE_OFFLINE_AFTER_SECONDS": "3",
    "SCHEDULER_SWEEP_SECONDS": "1",
    "SCHEDULER_RECONCILE_SECONDS": "2",
}


def node_env(cpu: str, memory_mb: int, labels: str = "") -> dict[str, str]:
    return {
        **FAST,
        "SCHEDULER_NODE_CPU": cpu,
        "SCHEDULER_NODE_MEMORY_MB": str(memory_mb),
        "SCHEDULER_NODE_LABELS": labels,
    }


def online(*names: str) -> bool:
    return Node.objects.filter(name__in=names, status=Node.Status.ONLINE).count() == len(names)


def submit(owner: Any, *, seconds: float, **fields: Any) -> Job:
    """A python `sleep` job, run now."""
    job = job_create(
        owner=owner,
        name=f"sleep-{seconds}",
        kind="python",
        payload={"handler": "sleep", "kwargs": {"seconds": seconds}},
        **fields,
    )
    job_trigger(job=job)
    return job


def statuses(jobs: list[Job]) -> Counter:
    return Counter(Execution.objects.filter(job__in=jobs).values_list("status", flat=True))


def all_succeeded_once(jobs: list[Job]) -> bool:
    """Every job has exactly one succeeded execution and none still active."""
    done = Counter(
        Execution.objects.filter(job__in=jobs, status=Execution.Status.SUCCEEDED).values_list(
            "job", flat=True
        )
    )
    active = Execution.objects.filter(job__in=jobs, status__in=Execution.ACTIVE).exists()
    return len(done) == len(jobs) and not active and max(done.values()) == 1


def wait_all_succeeded_once(jobs: list[Job], timeout: float) -> None:
    """Wait until every job succeeded exactly once; on timeout, fail with the statuses reached."""
    try:
        wait_for(lambda: all_succeeded_once(jobs), timeout=timeout, interval=0.5, what="jobs done")
    except pytest.fail.Exception:
        pytest.fail(f"not every job succeeded exactly once within {timeout:.0f}s: {statuses(jobs)}")


def assert_no_overcommit_and_all_released() -> None:
    for name in Node.objects.values_list("name", flat=True):
        assert node_overcommit_peaks(node_name=name) == [], name
    assert not ResourceAllocation.objects.filter(released_at__isnull=True).exists()


def test_200_jobs_with_resource_requests_never_overcommit_and_respect_labels(start_worker, start_beat):
    # Capacity, not pool size, is what limits each node: placement alone keeps it in budget.
    start_worker("w1@hostA", concurrency=3, **node_env("2", 2048, "region=eu,gpu=no"))
    start_worker("w2@hostB", concurrency=3, **node_env("1.5", 1024, "region=eu,gpu=yes"))
    start_worker("w3@hostC", concurrency=3, **node_env("2", 2048, "region=us"))
    start_beat(scheduler="celery.beat:PersistentScheduler", **FAST)
    wait_for(lambda: online("w1@hostA", "w2@hostB", "w3@hostC"), timeout=90, what="three nodes online")
    owner = UserFactory()
    shapes = [
        {"cpu": Decimal("0.5"), "memory_mb": 256, "node_selector": {"region": "eu"}},
        {"cpu": Decimal("1"), "memory_mb": 512, "node_selector": {"region": "us"}},
        {"cpu": Decimal("0.5"), "memory_mb": 400, "node_selector": {"gpu": "yes"}},
        {"cpu": Decimal("0.75"), "memory_mb": 128, "node_selector": {}},
    ]
    jobs: list[Job] = []
    lock = threading.Lock()

    def submitter(offset: int) -> None:
        try:
            for i in range(offset, 200, 4):
                job = submit(owner, seconds=0.05, **shapes[i % len(shapes)])
                with lock:
                    jobs.append(job)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(jobs) == 200

    wait_all_succeeded_once(jobs, timeout=240)
    assert_no_overcommit_and_all_released()
    for execution in Execution.objects.filter(job__in=jobs).select_related("job", "node"):
        assert execution.node is not None
        assert execution.node.labels.items() >= execution.job.node_selector.items(), execution
    used = set(Execution.objects.filter(job__in=jobs).values_list("node__name", flat=True))
    assert used == {"w1@hostA", "w2@hostB", "w3@hostC"}


@pytest.mark.broker_matrix
def test_sigkill_of_a_node_mid_job_loses_nothing_and_runs_the_next_attempt_elsewhere(
    start_worker, start_beat
):
    workers = {
        "k1@hostA": start_worker("k1@hostA", concurrency=1, **node_env("1", 1024)),
        "k2@hostB": start_worker("k2@hostB", concurrency=1, **node_env("1", 1024)),
    }
    start_beat(scheduler="celery.beat:PersistentScheduler", **FAST)
    wait_for(lambda: online(*workers), timeout=90, what="two nodes online")
    # The 20-second job of the issue: killed mid-run, it must finish on the other node as attempt 2.
    job = submit(UserFactory(), seconds=20, max_retries=2, retry_backoff_seconds=1, retry_jitter=False)
    first = wait_for(
        lambda: (
            Execution.objects.filter(job=job, attempt=1, status=Execution.Status.RUNNING)
            .select_related("node")
            .first()
        ),
        timeout=60,
        what="first attempt running",
    )
    victim = first.node.name

    workers[victim].kill_group()  # the host dies: main process and pool children, no goodbye

    wait_for(
        lambda: Node.objects.get(name=victim).status == Node.Status.OFFLINE, timeout=60, what="node offline"
    )
    first.refresh_from_db()
    assert first.status == Execution.Status.LOST
    assert victim in first.error
    survivor = next(name for name in workers if name != victim)
    wait_all_succeeded_once([job], timeout=90)
    winner = Execution.objects.get(job=job, status=Execution.Status.SUCCEEDED)
    assert (winner.attempt, winner.node.name) == (2, survivor)
    assert Execution.objects.filter(job=job).count() == 2
    assert_no_overcommit_and_all_released()

    # The dead node comes back: it is online again, and its old execution stays lost (no resurrection).
    start_worker(victim, concurrency=1, **node_env("1", 1024))
    wait_for(lambda: online(victim), timeout=90, what="node back online")
    first.refresh_from_db()
    assert first.status == Execution.Status.LOST
    assert Execution.objects.filter(job=job, status=Execution.Status.SUCCEEDED).count() == 1


def test_a_job_that_fits_no_node_waits_pending_and_runs_when_a_big_node_joins(start_worker):
    job = submit(UserFactory(), seconds=0.1, cpu=Decimal("3"), memory_mb=100)  # no node registered yet
    execution = Execution.objects.get(job=job)
    assert execution.status == Execution.Status.PENDING
    assert execution.pending_reason == "no online node"

    start_worker("small@hostA", concurrency=1, **node_env("1", 1024))
    wait_for(lambda: online("small@hostA"), timeout=90, what="small node online")
    wait_for(
        lambda: "waiting for a larger node" in Execution.objects.get(pk=execution.pk).pending_reason,
        timeout=30,
        what="the reason names the capacity that is missing",
    )
    execution.refresh_from_db()
    assert execution.status == Execution.Status.PENDING
    assert "3.000 cpu" in execution.pending_reason

    start_worker("big@hostB", concurrency=1, **node_env("4", 4096))
    wait_all_succeeded_once([job], timeout=90)
    assert Execution.objects.get(job=job).node.name == "big@hostB"


@pytest.mark.broker_matrix
def test_draining_then_sigterm_of_a_busy_node_loses_nothing(start_worker, start_beat):
    # d1 can hold 4 runs but executes one at a time: when it is stopped, some wait on its queue.
    d1 = start_worker("d1@hostA", concurrency=1, **node_env("2", 2048))
    start_beat(scheduler="celery.beat:PersistentScheduler", **FAST)
    wait_for(lambda: online("d1@hostA"), timeout=90, what="d1 online")
    owner = UserFactory()
    jobs = [
        # No retries: work queued on d1 when it stops must be placed again without using an attempt.
        submit(owner, seconds=2, cpu=Decimal("0.5"), max_retries=0)
        for _ in range(4)
    ]
    wait_for(
        lambda: Execution.objects.filter(job__in=jobs, status=Execution.Status.RUNNING).exists(),
        timeout=60,
        what="d1 running work",
    )
    start_worker("d2@hostB", concurrency=2, **node_env("2", 2048))
    wait_for(lambda: online("d2@hostB"), timeout=90, what="d2 online")

    call_command("node_drain", "d1@hostA")
    more = [submit(owner, seconds=0.2, cpu=Decimal("0.5"), max_retries=0) for _ in range(3)]
    d1.signal(signal.SIGTERM)

    wait_for(lambda: not d1.alive(), timeout=60, what="d1 finished its task and stopped")
    assert Node.objects.get(name="d1@hostA").status == Node.Status.OFFLINE
    everything = jobs + more
    wait_all_succeeded_once(everything, timeout=120)
    assert not Execution.objects.filter(job__in=more, node__name="d1@hostA").exists()  # drained: no new work
    # The run d1 was executing finished there, successfully, during the warm shutdown.
    assert Execution.objects.filter(job__in=jobs, node__name="d1@hostA", status="succeeded").exists()
    assert_no_overcommit_and_all_released()


def one_running_four_queued(start_worker: Any, name: str) -> list[Job]:
    """A one-slot node running one of five jobs, the other four queued for it (their messages waiting)."""
    start_worker(name, concurrency=1, **node_env("4", 4096))
    wait_for(lambda: online(name), timeout=90, what=f"{name} online")
    owner = UserFactory()
    # Long enough that the first is still running when the fifth is queued on a loaded machine (CI once saw
    # 1.2 s between the first and the last submission, and a 1 s job had ended before the state was seen).
    jobs = [submit(owner, seconds=6, cpu=Decimal("0.5")) for _ in range(5)]
    wait_for(
        lambda: statuses(jobs) == Counter({"running": 1, "queued": 4}),
        timeout=60,
        what="one running, 4 queued",
    )
    return jobs


def reconciled(start_beat: Any, jobs: list[Job]) -> None:
    """With beat running the reconciler, every job succeeds once, on its first execution."""
    start_beat(scheduler="celery.beat:PersistentScheduler", **FAST)
    wait_all_succeeded_once(jobs, timeout=120)
    assert Execution.objects.filter(job__in=jobs).count() == 5  # same executions, no retries needed
    assert_no_overcommit_and_all_released()


@pytest.mark.redis_only
def test_redis_flushed_while_executions_are_queued_the_reconciler_republishes_them(
    start_worker, start_beat, redis_client
):
    jobs = one_running_four_queued(start_worker, "r1@hostA")
    redis_client.flushdb()  # the broker restarted empty: four messages are gone
    reconciled(start_beat, jobs)


@pytest.mark.broker_matrix
def test_a_node_queue_purged_while_executions_are_queued_the_reconciler_republishes_them(
    start_worker, start_beat
):
    """The broker lost four messages (a queue purged; on RabbitMQ the reconciler sees only counts)."""
    jobs = one_running_four_queued(start_worker, "r2@hostA")
    with current_app.connection_for_write() as conn:
        purged = current_app.amqp.queues[node_queue_name("r2@hostA")](conn.default_channel).purge()
    assert purged == 4
    reconciled(start_beat, jobs)
