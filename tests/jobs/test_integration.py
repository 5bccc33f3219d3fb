"""End to end with real celery worker and beat processes against PostgreSQL and Redis."""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import psutil
import pytest
from django.utils import timezone

from jobs.models import DeadLetter, Execution, Job, JobRetry
from jobs.services import dead_letter_replay, execution_cancel, firing, job_create, job_trigger
from nodes.models import Node
from tests.conftest import broker_drain, broker_queue_length, wait_for

pytestmark = pytest.mark.integration

STOCK_BEAT = "django_celery_beat.schedulers:DatabaseScheduler"
FAST = {
    "SCHEDULER_SWEEP_SECONDS": "1",  # the stock scheduler stores whole seconds
    "SCHEDULER_HEARTBEAT_SECONDS": "1",
    "SCHEDULER_NODE_CPU": "4",
    "SCHEDULER_NODE_MEMORY_MB": "4096",
}


@pytest.fixture
def worker(start_worker):
    """One worker (consuming "default" and its node queue), its node online."""
    proc = start_worker(name="jw1@testhost", concurrency=2, queues="default", **FAST)
    wait_for(
        lambda: Node.objects.filter(name="jw1@testhost", status=Node.Status.ONLINE).exists(),
        timeout=90,
        what=f"the worker's node to be online; log:\n{proc.log()[-3000:]}",
    )
    return proc


def _wait(predicate, *, timeout: float, what: str, procs=()) -> object:
    """wait_for, with the processes' log tails in the failure message (read when it fails)."""
    try:
        return wait_for(predicate, timeout=timeout, what=what)
    except pytest.fail.Exception:
        logs = "\n".join(f"--- {p.log_path.name}\n{p.log()[-4000:]}" for p in procs)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def _statuses(job: Job) -> list[str]:
    return list(job.executions.order_by("attempt", "created_at").values_list("status", flat=True))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.broker_matrix
def test_interval_shell_job_runs_once_per_slot(worker, start_beat, shell_user):
    job = job_create(
        owner=shell_user,
        name="tick",
        kind="shell",
        payload={"command": ["echo", "tick"]},
        schedule={"type": "interval", "every_seconds": 2},
    )
    beat = start_beat(scheduler=STOCK_BEAT, **FAST)
    done = job.executions.filter(status=Execution.Status.SUCCEEDED)
    _wait(lambda: done.count() >= 3, timeout=120, what="3 runs", procs=(worker, beat))
    slots = list(job.executions.values_list("scheduled_for", flat=True))
    assert len(slots) == len(set(slots))  # one execution per slot
    assert all(e.output.strip() == "tick" and e.exit_code == 0 for e in done)
    job.schedule.refresh_from_db()
    assert job.schedule.total_runs >= 3
    assert job.schedule.next_run_at > job.schedule.last_run_at - timedelta(seconds=2)


@pytest.mark.broker_matrix
def test_failing_job_retries_with_backoff_then_dead_letter_then_replay(worker, start_beat):
    broker_drain("dead_letter")  # notices other tests' dead letters left on the shared test broker
    job = job_create(
        owner=worker_owner(),
        name="flaky",
        kind="python",
        payload={"handler": "fail"},
        max_retries=2,
        retry_backoff_seconds=1,
        retry_jitter=False,
    )
    start_beat(scheduler=STOCK_BEAT, **FAST)
    job_trigger(job=job)
    wait_for(lambda: DeadLetter.objects.filter(job=job).exists(), timeout=120, what="a dead letter")
    executions = list(job.executions.order_by("attempt"))
    assert [e.attempt for e in executions] == [1, 2, 3]
    assert [e.status for e in executions] == ["retrying", "retrying", "dead"]
    assert executions[1].retry_of == executions[0]
    assert executions[2].retry_of == executions[1]
    assert len({e.scheduled_for for e in executions}) == 1  # retries serve the same slot
    delays = [
        (r.retry_at - r.failed_execution.finished_at).total_seconds()
        for r in JobRetry.objects.filter(job=job).order_by("next_attempt")
    ]
    assert len(delays) == 2
    assert delays[0] < delays[1]
    dead = DeadLetter.objects.get(job=job)
    assert dead.execution == executions[2]
    assert "failed on purpose" in dead.error
    assert broker_queue_length("dead_letter") == 1  # the notice on the dead_letter queue

    replay = dead_letter_replay(dead_letter_id=dead.pk)
    assert replay.replay_of == executions[2]
    assert replay.trigger == Execution.Trigger.REPLAY
    wait_for(lambda: Execution.objects.get(pk=replay.pk).status == "retrying", timeout=60, what="the replay")
    dead.refresh_from_db()
    assert dead.status == DeadLetter.Status.REPLAYED
    assert dead.replay_count == 1


def worker_owner():
    from tests.factories import UserFactory

    return UserFactory()


def test_timeout_kills_the_job_and_its_children(worker, shell_user, tmp_path):
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(c.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(300)\n"
    )
    job = job_create(
        owner=shell_user,
        name="slow",
        kind="shell",
        timeout_seconds=3,
        payload={"command": [sys.executable, "-c", script]},
    )
    execution = job_trigger(job=job)
    wait_for(
        lambda: Execution.objects.get(pk=execution.pk).status == "timed_out", timeout=90, what="timed_out"
    )
    execution.refresh_from_db()
    assert "timed out" in execution.error
    assert "started" in execution.output
    assert _gone(int(pidfile.read_text()))
    assert not execution.allocation.active  # its capacity was released


def test_cancel_kills_a_running_job(worker, shell_user, tmp_path):
    pidfile = tmp_path / "job.pid"
    script = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    job = job_create(
        owner=shell_user, name="long", kind="shell", payload={"command": [sys.executable, "-c", script]}
    )
    execution = job_trigger(job=job)
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout=60, what="the job to start")
    assert Execution.objects.get(pk=execution.pk).status == "running"
    assert execution_cancel(execution_id=execution.pk, reason="stop it")
    pid = int(pidfile.read_text())
    wait_for(lambda: _gone(pid), timeout=30, what="the cancelled process to be killed")
    wait_for(lambda: not Execution.objects.get(pk=execution.pk).allocation.active, timeout=30, what="release")
    assert Execution.objects.get(pk=execution.pk).status == "cancelled"


def _slot_job(policy: str) -> Job:
    return job_create(
        owner=worker_owner(),
        name=policy,
        kind="python",
        concurrency_policy=policy,
        payload={"handler": "sleep", "kwargs": {"seconds": 60}},
        schedule={"type": "interval", "every_seconds": 3600},
    )


def test_forbid_skips_a_slot_while_a_run_is_active(worker):
    job = _slot_job("forbid")
    now = timezone.now().replace(microsecond=0)
    first = firing.fire(job_id=job.pk, scheduled_for=now)
    wait_for(lambda: Execution.objects.get(pk=first.pk).status == "running", timeout=60, what="first run")
    second = firing.fire(job_id=job.pk, scheduled_for=now + timedelta(seconds=1))
    assert second.status == Execution.Status.SKIPPED
    assert "forbid" in second.error
    assert firing.fire(job_id=job.pk, scheduled_for=now) is None  # duplicate slot: no-op
    execution_cancel(execution_id=first.pk)


def test_replace_cancels_the_running_one_and_starts_the_new(worker):
    job = _slot_job("replace")
    now = timezone.now().replace(microsecond=0)
    first = firing.fire(job_id=job.pk, scheduled_for=now)
    wait_for(lambda: Execution.objects.get(pk=first.pk).status == "running", timeout=60, what="first run")
    second = firing.fire(job_id=job.pk, scheduled_for=now + timedelta(seconds=1))
    assert Execution.objects.get(pk=first.pk).status == "cancelled"
    wait_for(lambda: Execution.objects.get(pk=second.pk).status == "running", timeout=60, what="the new run")
    # The replaced run was interrupted in its worker: its claim-holder stored what it had, then let go.
    wait_for(lambda: not Execution.objects.get(pk=first.pk).allocation.active, timeout=30, what="release")
    execution_cancel(execution_id=second.pk)


@pytest.mark.broker_matrix
def test_a_job_that_kills_its_worker_ends_in_the_dead_letter_queue(worker, start_beat):
    job = job_create(
        owner=worker_owner(),
        name="poison",
        kind="python",
        payload={"handler": "crash"},
        max_retries=2,
        retry_backoff_seconds=1,
        retry_jitter=False,
    )
    start_beat(scheduler=STOCK_BEAT, **FAST)
    job_trigger(job=job)
    wait_for(
        lambda: DeadLetter.objects.filter(job=job).exists(),
        timeout=150,
        what=f"the poison job's dead letter; statuses {_statuses(job)}; log:\n{worker.log()[-4000:]}",
    )
    executions = list(job.executions.order_by("attempt"))
    assert [e.attempt for e in executions] == [1, 2, 3]
    assert all(e.status == Execution.Status.LOST for e in executions)
    assert "died" in executions[0].error
    assert worker.alive()  # the worker survived its pool processes being killed
    assert os.path.exists(worker.log_path)
