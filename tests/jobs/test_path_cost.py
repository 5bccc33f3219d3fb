"""The fire -> execute path stays cheap (issue 3): round trips per job, one watcher thread per process."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs.executors import python
from jobs.models import Execution, Job
from jobs.services import firing
from monitoring.models import ExecutionLogChunk
from monitoring.selectors import log_read
from nodes.models import Node, ResourceAllocation
from tests.factories import JobFactory, UserFactory
from worker import runner

# Inside the test's transaction, each atomic block is a savepoint: BEGIN/COMMIT become SAVEPOINT/RELEASE.
# fire: savepoint, insert (with the job and schedule fields), schedule read + bookkeeping, reserve (node
# counter and allocation in one statement), queued, release savepoint.
FIRE_QUERIES = 7
# run: the claim (returns what the executor needs) and the finish (status, output, capacity released).
RUN_QUERIES = 2


def test_fire_and_run_of_a_job_take_few_round_trips(node):
    job = JobFactory()
    slot = datetime(2030, 1, 1, tzinfo=UTC)
    with CaptureQueriesContext(connection) as fired:
        execution = firing.fire(job_id=job.pk, scheduled_for=slot)
    assert execution is not None
    assert execution.status == Execution.Status.QUEUED
    assert execution.node == node
    assert ResourceAllocation.objects.filter(execution=execution, released_at__isnull=True).exists()
    with CaptureQueriesContext(connection) as ran:
        assert runner.execution_run(execution_id=execution.pk) == Execution.Status.SUCCEEDED

    execution.refresh_from_db()
    assert execution.status == Execution.Status.SUCCEEDED
    assert execution.progress == 100.0
    assert not ResourceAllocation.objects.filter(execution=execution, released_at__isnull=True).exists()
    # A short run's output is written with the finish (its row's tail), not as a separate chunk.
    assert execution.output == "echo {'message': 'hi'}\n"
    assert not ExecutionLogChunk.objects.filter(execution=execution).exists()
    log = log_read(execution_id=execution.pk)
    assert (log.text, log.complete) == ("echo {'message': 'hi'}\n", True)
    assert len(fired) - 1 <= FIRE_QUERIES, [q["sql"][:80] for q in fired.captured_queries]  # -1: read back
    assert len(ran) <= RUN_QUERIES, [q["sql"][:80] for q in ran.captured_queries]


def test_firing_a_batch_costs_the_same_round_trips_as_one_slot(node):
    Node.objects.filter(pk=node.pk).update(cpu_capacity=100)  # room for all 50
    owner = UserFactory()
    jobs = [JobFactory(owner=owner) for _ in range(50)]
    slot = datetime(2030, 1, 1, tzinfo=UTC)
    with CaptureQueriesContext(connection) as one:
        firing.slots_fire(slots=[firing.Slot(job_id=jobs[0].pk, scheduled_for=slot)])
    with CaptureQueriesContext(connection) as many:
        ids = firing.slots_fire(slots=[firing.Slot(job_id=j.pk, scheduled_for=slot) for j in jobs[1:]])
    assert len(ids) == 49
    assert Execution.objects.filter(pk__in=ids, status=Execution.Status.QUEUED).count() == 49
    # + the nodes read, locked and booked at once, the allocation rows in one insert
    assert len(many) <= len(one) + 3, [q["sql"][:80] for q in many.captured_queries]
    # Fired again (a second beat, a redelivery): nothing new, and paused jobs fire nothing.
    Job.objects.filter(pk=jobs[1].pk).update(status=Job.Status.PAUSED)
    assert firing.slots_fire(slots=[firing.Slot(job_id=j.pk, scheduled_for=slot) for j in jobs]) == []


def test_one_watcher_thread_times_out_concurrent_runs_separately():
    results: dict[str, str] = {}

    def run(name: str, seconds: float, timeout: float) -> None:
        outcome = python.run({"handler": "sleep", "kwargs": {"seconds": seconds}}, timeout=timeout)
        results[name] = outcome.status

    threads = [
        threading.Thread(target=run, args=("short", 0.2, 30)),
        threading.Thread(target=run, args=("long", 2.5, 1)),  # not the main thread: reported, not interrupted
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {"short": "succeeded", "long": "timed_out"}
    watchers = [t for t in threading.enumerate() if t.name == "python-executor-watcher"]
    assert len(watchers) == 1
