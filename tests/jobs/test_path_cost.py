"""The fire -> execute path stays cheap (issue 3): round trips per job, one watcher thread per process."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import dispatch, runner
from jobs.executors import python
from jobs.models import Execution
from monitoring.models import ExecutionLogChunk
from nodes.models import ResourceAllocation
from tests.factories import JobFactory

# Inside the test's transaction, each atomic block is a savepoint: BEGIN/COMMIT become SAVEPOINT/RELEASE.
FIRE_QUERIES = (
    11  # job and schedule locks, slot insert (savepoint), node lock, capacity sum, allocation, queued
)
RUN_QUERIES = 10  # claim and read, log end, log chunk (savepoint), finish and release (savepoint)


def test_fire_and_run_of_a_job_take_few_round_trips(node):
    job = JobFactory()
    slot = datetime(2030, 1, 1, tzinfo=UTC)
    with CaptureQueriesContext(connection) as fired:
        execution = dispatch.fire(job_id=job.pk, scheduled_for=slot)
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
    assert ExecutionLogChunk.objects.filter(execution=execution).values_list("text", flat=True).get() == (
        "echo {'message': 'hi'}\n"
    )
    assert len(fired) <= FIRE_QUERIES, [q["sql"][:80] for q in fired.captured_queries]
    assert len(ran) <= RUN_QUERIES, [q["sql"][:80] for q in ran.captured_queries]


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
