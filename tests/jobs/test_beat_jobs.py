"""Real beats (jobs.beat:JobScheduler, firing job slots in-process) and a worker: one execution per slot."""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime, timedelta

import pytest

from jobs.beat import leader_status
from jobs.beat.lease import LEASE_KEY
from jobs.broker import broker_execution_ids
from jobs.models import Execution
from jobs.services import job_create
from nodes.models import Node
from tests.conftest import wait_for
from tests.factories import UserFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

FAST = {
    "SCHEDULER_SWEEP_SECONDS": "0.5",
    "SCHEDULER_HEARTBEAT_SECONDS": "1",
    "SCHEDULER_NODE_CPU": "4",
    "SCHEDULER_NODE_MEMORY_MB": "4096",
}
BEAT = {**FAST, "SCHEDULER_BEAT_LEASE_SECONDS": "3", "SCHEDULER_BEAT_FLUSH_SECONDS": "1"}


def online_worker(start_worker, name: str, **env: str):  # type: ignore[no-untyped-def]
    """A real worker consuming `default` and its node queue, once its node is online."""
    worker = start_worker(name=name, concurrency=2, queues="default", **env)
    wait_for(
        lambda: Node.objects.filter(name=name, status=Node.Status.ONLINE).exists(),
        timeout=90,
        what=f"the worker's node; log:\n{worker.log()[-2000:]}",
    )
    return worker


def test_two_beats_give_one_execution_per_slot_and_hand_over(start_worker, start_beat, redis_client) -> None:
    redis_client.delete(LEASE_KEY)
    online_worker(start_worker, "bw1@testhost", **FAST)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    job = job_create(
        owner=UserFactory(),
        name="beat-tick",
        kind="python",
        payload={"handler": "echo", "kwargs": {"message": "tick"}},
        schedule={"type": "interval", "every_seconds": 1, "start_at": start.isoformat()},
    )
    beats = {}
    for label in ("beat1", "beat2"):
        beat = start_beat(label, scheduler="jobs.beat:JobScheduler", **BEAT)
        beats[beat.pid] = beat
    done = Execution.objects.filter(job=job, status=Execution.Status.SUCCEEDED)
    logs = lambda: "\n".join(b.log()[-1500:] for b in beats.values())  # noqa: E731
    wait_for(lambda: done.count() >= 10, timeout=120, what=f"10 runs; logs:\n{logs()}")

    holder = leader_status(client=redis_client)["leader"]
    leader = int(holder.split(":")[-2])
    beats[leader].signal(signal.SIGKILL)
    killed_at = datetime.now(UTC)
    after_kill = done.filter(scheduled_for__gt=killed_at)
    wait_for(lambda: after_kill.count() >= 5, timeout=120, what=f"runs after the handover; logs:\n{logs()}")
    assert (leader_status(client=redis_client)["leader"] or "").split(":")[-2] != str(leader)

    executions = list(Execution.objects.filter(job=job).values_list("scheduled_for", "attempt", "status"))
    slots = [slot for slot, _, _ in executions]
    assert len(slots) == len(set(slots)), "one execution per slot"
    assert {attempt for _, attempt, _ in executions} == {1}
    assert all((slot - start) % timedelta(seconds=1) == timedelta(0) for slot in slots)
    assert Execution.Status.FAILED not in {status for _, _, status in executions}


def test_two_beats_both_firing_every_slot_for_a_minute_give_one_execution_per_slot(
    start_worker, start_beat
) -> None:
    # Without the lease to keep one of them quiet, the unique (job, slot, attempt) constraint is what holds.
    worker = online_worker(start_worker, "bw2@testhost", **FAST)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    job = job_create(
        owner=UserFactory(),
        name="double-fired",
        kind="python",
        payload={"handler": "echo", "kwargs": {"message": "tick"}},
        schedule={"type": "interval", "every_seconds": 1, "start_at": start.isoformat()},
    )
    beats = [
        start_beat(label, scheduler="tests.jobs.beat_variants:UnleasedScheduler", **BEAT)
        for label in ("free1", "free2")
    ]
    done = Execution.objects.filter(job=job, status=Execution.Status.SUCCEEDED)
    wait_for(lambda: done.count() >= 50, timeout=180, what=f"50 runs; worker log:\n{worker.log()[-2000:]}")

    executions = list(Execution.objects.filter(job=job).values_list("scheduled_for", "attempt"))
    slots = [slot for slot, _ in executions]
    assert len(slots) == len(set(slots)), "one execution per slot"
    assert {attempt for _, attempt in executions} == {1}
    # Both beats really fired: about two firings per execution (one of them found the slot taken).
    fired = sum(int(n) for beat in beats for n in re.findall(r"beat: fired (\d+) slot", beat.log()))
    assert fired >= 1.5 * len(executions), (fired, len(executions))


def test_a_beat_killed_between_its_commit_and_the_publish_loses_nothing(
    start_worker, start_beat, redis_client
) -> None:
    redis_client.delete(LEASE_KEY)
    fast = {**FAST, "SCHEDULER_RECONCILE_SECONDS": "2"}
    worker = online_worker(start_worker, "bw3@testhost", **fast)
    slot = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    job = job_create(
        owner=UserFactory(),
        name="killed-beat",
        kind="python",
        payload={"handler": "echo", "kwargs": {"message": "once"}},
        schedule={"type": "once", "run_at": slot.isoformat()},
    )
    doomed = start_beat("doomed", scheduler="tests.jobs.beat_variants:KilledBeforePublishScheduler", **BEAT)
    assert doomed.popen.wait(timeout=90) == -signal.SIGKILL, doomed.log()[-2000:]
    # Committed: the execution is queued on the node, but its message never reached the broker.
    execution = Execution.objects.get(job=job)
    assert (execution.status, execution.scheduled_for) == (Execution.Status.QUEUED, slot)
    assert execution.pk not in broker_execution_ids(queue_names=["node.bw3@testhost", "default"])

    # A healthy beat takes over; its reconciler republishes the lost message; the worker runs it once.
    beat = start_beat("healthy", scheduler="jobs.beat:JobScheduler", **{**BEAT, **fast})
    wait_for(
        lambda: Execution.objects.filter(pk=execution.pk, status=Execution.Status.SUCCEEDED).exists(),
        timeout=120,
        what=f"the run; beat log:\n{beat.log()[-2000:]}\nworker log:\n{worker.log()[-2000:]}",
    )
    assert list(Execution.objects.filter(job=job).values_list("scheduled_for", "attempt")) == [(slot, 1)]
