"""Nothing stays `running` that is not running: real workers, beat, PostgreSQL and Redis, faults for real.

Each scenario runs three times in a row (the `round_` parameter): database connections terminated while runs
are in flight, the database refusing connections while runs finish, a worker SIGKILLed and started again
under its own name, and one pool process SIGKILLed under a shell job (never two copies at once).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from django.db import InterfaceError, OperationalError, connection

from jobs.models import Execution, Job
from jobs.services import job_create, job_trigger
from nodes.models import Node
from tests.conftest import database_connect, processes_with, wait_for

pytestmark = pytest.mark.integration
ROUNDS = [1, 2, 3]
ACTIVE = ("pending", "queued", "running")


def fast(tmp_path) -> dict[str, str]:
    return {
        "SCHEDULER_SWEEP_SECONDS": "1",
        "SCHEDULER_HEARTBEAT_SECONDS": "1",
        "SCHEDULER_NODE_CPU": "16",
        "SCHEDULER_NODE_MEMORY_MB": "16384",
        "SCHEDULER_RUN_DIR": str(tmp_path / "runs"),
    }


def db(query: Callable[[], Any]) -> Any:
    """Run a read of the test's own; a connection the test terminated itself is reopened."""
    for _ in range(3):
        try:
            return query()
        except (OperationalError, InterfaceError):
            connection.close()
            time.sleep(0.2)
    return query()


def terminate_backends(times: int = 3, gap: float = 2.0) -> int:
    """pg_terminate_backend on every connection of the test database, `times` times `gap` seconds apart."""
    name = connection.settings_dict["NAME"]
    killed = 0
    with database_connect("postgres") as admin:
        for i in range(times):
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
            ).fetchall()
            killed += len(rows)
            if i < times - 1:
                time.sleep(gap)
    return killed


@contextlib.contextmanager
def database_away() -> Iterator[None]:
    """The test database refuses new connections and loses its open ones, until the block ends."""
    name = connection.settings_dict["NAME"]
    with database_connect("postgres") as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    connection.close()


def python_job(owner, name: str, script: str, marker: str, **fields: Any) -> Job:
    return job_create(
        owner=owner,
        name=name,
        kind="shell",
        payload={"command": [sys.executable, "-c", script, marker]},
        retry_backoff_seconds=1,
        retry_jitter=False,
        **fields,
    )


def statuses(job: Job) -> list[str]:
    return db(lambda: list(job.executions.order_by("attempt").values_list("status", flat=True)))


def settled(job: Job) -> bool:
    """The job has a success and nothing of it is left to run."""
    rows = statuses(job)
    return "succeeded" in rows and not any(s in ACTIVE for s in rows)


def assert_running_means_alive() -> None:
    """Every `running` execution belongs to a live process of its node's current worker start."""
    for execution in Execution.objects.filter(status="running").select_related("node"):
        assert execution.node is not None, execution
        assert execution.node.status != Node.Status.OFFLINE, execution
        assert execution.worker_incarnation == execution.node.incarnation, execution
        assert execution.worker_pid, execution
        assert psutil.pid_exists(execution.worker_pid), execution


def wait(predicate, *, timeout: float, what: str, procs=()) -> Any:
    try:
        return wait_for(lambda: db(predicate), timeout=timeout, what=what)
    except pytest.fail.Exception:
        logs = "\n".join(f"--- {p.log_path.name}\n{p.log()[-5000:]}" for p in procs)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


SLEEP_THEN_PRINT = "import sys, time; time.sleep(float(sys.argv[2])); print('done')"


@pytest.mark.parametrize("round_", ROUNDS)
def test_connections_terminated_mid_run_every_run_ends_once(
    round_, start_worker, start_beat, shell_user, tmp_path
):
    env = fast(tmp_path)
    worker = start_worker(name=f"blip{round_}@testhost", concurrency=6, queues="default", **env)
    beat = start_beat(**env)
    wait(lambda: Node.objects.filter(name=f"blip{round_}@testhost").exists(), timeout=90, what="the node",
         procs=(worker,))  # fmt: skip
    marker = f"blip-job-{round_}-{time.monotonic_ns()}"
    jobs = [
        job_create(
            owner=shell_user,
            name=f"blip-{i}",
            kind="shell",
            payload={"command": [sys.executable, "-c", SLEEP_THEN_PRINT, marker, "5"]},
            max_retries=2,
            retry_backoff_seconds=1,
            retry_jitter=False,
        )
        for i in range(6)
    ]
    for job in jobs:
        job_trigger(job=job)
    wait(lambda: Execution.objects.filter(job__in=jobs, status="running").count() == 6, timeout=90,
         what="six runs in flight", procs=(worker, beat))  # fmt: skip

    assert terminate_backends(times=3, gap=2.0) > 0

    for job in jobs:
        wait(lambda job=job: settled(job), timeout=180, what=f"{job.name} to end: {statuses(job)}",
             procs=(worker, beat))  # fmt: skip
    for job in jobs:
        rows = statuses(job)
        assert rows.count("succeeded") == 1, rows
        done = job.executions.get(status="succeeded")
        assert done.output.strip() == "done"
    assert not Execution.objects.filter(job__in=jobs, status="running").exists()
    wait(lambda: not processes_with(marker), timeout=30, what="the jobs' processes to be gone")
    assert worker.alive()
    assert beat.alive()
    assert_running_means_alive()


@pytest.mark.parametrize("round_", ROUNDS)
def test_database_away_while_runs_finish_outcomes_recorded_once(round_, start_worker, shell_user, tmp_path):
    env = fast(tmp_path)
    worker = start_worker(name=f"away{round_}@testhost", concurrency=4, queues="default", **env)
    wait(lambda: Node.objects.filter(name=f"away{round_}@testhost").exists(), timeout=90, what="the node",
         procs=(worker,))  # fmt: skip
    marker = f"away-job-{round_}-{time.monotonic_ns()}"
    jobs = [
        job_create(
            owner=shell_user,
            name=f"away-{i}",
            kind="shell",
            payload={"command": [sys.executable, "-c", SLEEP_THEN_PRINT, marker, "2"]},
        )
        for i in range(4)
    ]
    for job in jobs:
        job_trigger(job=job)
    wait(lambda: Execution.objects.filter(job__in=jobs, status="running").count() == 4, timeout=90,
         what="four runs in flight", procs=(worker,))  # fmt: skip

    with database_away():
        # The runs end while nothing can reach the database: their outcomes wait in the worker.
        wait_for(lambda: not processes_with(marker), timeout=30, what="the jobs to end")
        time.sleep(3)

    for job in jobs:
        wait(lambda job=job: statuses(job) == ["succeeded"], timeout=120,
             what=f"{job.name}'s outcome to be recorded: {statuses(job)}", procs=(worker,))  # fmt: skip
    assert "database unavailable" in worker.log()  # the finish was retried, not given up
    assert worker.alive()
    assert_running_means_alive()


RUN_ONCE_LONG = (
    "import os, sys, time\n"
    "flag = sys.argv[2]\n"
    "if os.path.exists(flag):\n"
    "    time.sleep(float(sys.argv[3])); print('second attempt')\n"
    "else:\n"
    "    open(flag, 'w').close(); time.sleep(300)\n"
)


@pytest.mark.parametrize("round_", ROUNDS)
def test_worker_restarted_under_its_own_name_recovers_its_run(
    round_, start_worker, start_beat, shell_user, tmp_path
):
    env = fast(tmp_path)
    name = f"again{round_}@testhost"
    first = start_worker(name=name, concurrency=2, queues="default", **env)
    beat = start_beat(**env)
    wait(lambda: Node.objects.filter(name=name).exists(), timeout=90, what="the node", procs=(first,))
    marker = f"again-job-{round_}-{time.monotonic_ns()}"
    job = job_create(
        owner=shell_user,
        name="long",
        kind="shell",
        payload={"command": [sys.executable, "-c", RUN_ONCE_LONG, marker, str(tmp_path / "flag"), "1"]},
        max_retries=1,
        retry_backoff_seconds=1,
        retry_jitter=False,
    )
    job_trigger(job=job)
    wait(lambda: statuses(job) == ["running"] and processes_with(marker), timeout=90,
         what="the run in flight", procs=(first, beat))  # fmt: skip
    incarnation = Node.objects.get(name=name).incarnation

    first.kill_group()  # SIGKILL of the main process and its pool; the job (its own session) survives
    assert processes_with(marker), "the job should outlive its worker, as it does on a real host"

    second = start_worker(name=name, concurrency=2, queues="default", **env)
    wait(lambda: settled(job), timeout=120, what=f"the run recovered and retried: {statuses(job)}",
         procs=(second, beat))  # fmt: skip
    assert statuses(job) == ["lost", "succeeded"]
    lost = job.executions.get(attempt=1)
    assert "restarted" in lost.error
    assert Node.objects.get(name=name).incarnation != incarnation
    assert job.executions.get(attempt=2).output.strip() == "second attempt"
    wait_for(lambda: not processes_with(marker), timeout=30, what="the first attempt's process to be gone")
    assert_running_means_alive()


@pytest.mark.parametrize("round_", ROUNDS)
def test_pool_process_sigkill_never_runs_two_copies(round_, start_worker, start_beat, shell_user, tmp_path):
    env = fast(tmp_path)
    name = f"child{round_}@testhost"
    worker = start_worker(name=name, concurrency=1, queues="default", **env)
    beat = start_beat(**env)
    wait(lambda: Node.objects.filter(name=name).exists(), timeout=90, what="the node", procs=(worker,))
    marker = f"child-job-{round_}-{time.monotonic_ns()}"
    job = job_create(
        owner=shell_user,
        name="long",
        kind="shell",
        payload={"command": [sys.executable, "-c", RUN_ONCE_LONG, marker, str(tmp_path / "flag"), "4"]},
        max_retries=1,
        retry_backoff_seconds=1,
        retry_jitter=False,
    )
    most = [0]
    watching = threading.Event()
    watching.set()

    def watch() -> None:
        while watching.is_set():
            most[0] = max(most[0], len(processes_with(marker)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        job_trigger(job=job)
        wait(lambda: statuses(job) == ["running"] and processes_with(marker), timeout=90,
             what="the run in flight", procs=(worker, beat))  # fmt: skip
        pool_pid = job.executions.get(attempt=1).worker_pid
        assert pool_pid in [p.pid for p in psutil.Process(worker.pid).children()]
        psutil.Process(pool_pid).kill()
        wait(lambda: settled(job), timeout=120, what=f"the retry to succeed: {statuses(job)}",
             procs=(worker, beat))  # fmt: skip
    finally:
        watching.clear()
        watcher.join(timeout=10)
    assert statuses(job) == ["lost", "succeeded"]
    assert most[0] == 1, "the lost attempt's job ran beside its retry"
    assert not processes_with(marker)
    assert worker.alive()
    assert_running_means_alive()
