"""Real `celery beat` processes with jobs.beat:JobScheduler against PostgreSQL and Redis.

These tests read what beat published straight from the Redis broker lists (no worker consumes them),
so they prove one firing per slot independently of the jobs core. Their entries run a probe task: job
firings (`jobs.fire` entries) are not published but fired in-process (tests/jobs/test_beat_jobs.py).
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django_celery_beat.models import ClockedSchedule, IntervalSchedule, PeriodicTask

from jobs.beat import leader_status
from jobs.beat.lease import LEASE_KEY
from tests.conftest import broker_drain, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.broker_matrix, pytest.mark.django_db(transaction=True)]

SCHEDULER = "jobs.beat:JobScheduler"
PROBE_TASK = "tests.beat_probe"  # sent as a message like every entry that is not a job firing


_seen: list[dict[str, Any]] = []  # the messages this test's beats published, taken off the default queue


@pytest.fixture(autouse=True)
def _empty_queues(redis_client) -> None:
    """Each test reads what its own beats published: start from an empty default queue and no lease."""
    broker_drain("default")
    _seen.clear()
    redis_client.delete(LEASE_KEY)


def published(redis_client, prefix: str = "t:") -> list[tuple[str, datetime, dict[str, Any]]]:
    """(periodic task name, slot, kwargs) of every message beat published on the default queue so far
    (taken off the queue as they come: nothing else consumes it here; Redis or RabbitMQ alike)."""
    _seen.extend(broker_drain("default"))
    found = []
    for message in _seen:
        headers = message["headers"]
        name = headers.get("periodic_task_name", "")
        if name.startswith(prefix):
            kwargs = json.loads(headers["kwargsrepr"].replace("'", '"'))
            found.append((name, datetime.fromisoformat(headers["scheduled_for"]), kwargs))
    return found


def interval_task(name: str, seconds: int, start: datetime, task: str = PROBE_TASK) -> PeriodicTask:
    interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(
        name=name, task=task, interval=interval, kwargs=json.dumps({"job_id": 1}), start_time=start
    )


def beat_env(lease: float) -> dict[str, str]:
    return {"SCHEDULER_BEAT_LEASE_SECONDS": str(lease), "SCHEDULER_BEAT_FLUSH_SECONDS": "1"}


def soon() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)


def test_interval_and_one_off_entries_fire_on_their_slots(start_beat, redis_client) -> None:
    start = soon()
    interval_task("t:every2", 2, start)
    clocked = ClockedSchedule.objects.create(clocked_time=start + timedelta(seconds=3))
    PeriodicTask.objects.create(
        name="t:once", task=PROBE_TASK, clocked=clocked, one_off=True, kwargs='{"job_id": 2}'
    )
    beat = start_beat("beat1", scheduler=SCHEDULER, **beat_env(lease=3))

    wait_for(
        lambda: len([p for p in published(redis_client) if p[0] == "t:every2"]) >= 4, 90, what="4 firings"
    )
    wait_for(lambda: not PeriodicTask.objects.get(name="t:once").enabled, 30, what="one-off disabled")
    beat.stop()

    sent = published(redis_client)
    every2 = sorted(slot for name, slot, _ in sent if name == "t:every2")
    assert len(every2) == len(set(every2))
    assert all((slot - start) % timedelta(seconds=2) == timedelta(0) for slot in every2)
    assert [(slot, kwargs) for name, slot, kwargs in sent if name == "t:once"] == [
        (start + timedelta(seconds=3), {"job_id": 2})  # the slot rides in the scheduled_for header
    ]
    task = PeriodicTask.objects.get(name="t:every2")
    assert task.last_run_at is not None
    assert task.last_run_at >= every2[0]


def test_two_beats_running_together_fire_each_slot_once(start_beat, redis_client) -> None:
    start = soon()
    for n in range(3):
        interval_task(f"t:job{n}", 1, start)
    beats = [start_beat(f"beat{n}", scheduler=SCHEDULER, **beat_env(lease=2)) for n in (1, 2)]

    def enough() -> bool:
        counts = Counter(name for name, _, _ in published(redis_client))
        return len(counts) == 3 and min(counts.values()) >= 30

    wait_for(enough, 150, interval=1, what="30 slots of each entry")
    assert all(beat.alive() for beat in beats), "both beats ran the whole time"
    for beat in beats:
        beat.stop()

    sent = published(redis_client)
    for n in range(3):
        slots = [slot for name, slot, _ in sent if name == f"t:job{n}"]
        duplicates = [slot for slot, times in Counter(slots).items() if times > 1]
        assert duplicates == [], f"t:job{n} fired a slot twice"
        assert all((slot - start) % timedelta(seconds=1) == timedelta(0) for slot in slots)


def test_killing_the_leader_hands_over_to_the_follower(start_beat, redis_client) -> None:
    interval_task("t:tick", 1, soon())
    beats = {}
    for label in ("beat1", "beat2"):
        beat = start_beat(label, scheduler=SCHEDULER, **beat_env(lease=3))
        beats[beat.pid] = beat

    def leader_pid() -> int | None:
        holder = leader_status(client=redis_client)["leader"]
        return int(holder.split(":")[-2]) if holder else None

    first = wait_for(lambda: leader_pid() in beats and leader_pid(), 90, what="a leader")
    wait_for(lambda: len(published(redis_client)) >= 3, 60, what="the leader firing")
    beats[first].signal(signal.SIGKILL)
    killed_at = datetime.now(UTC)
    assert beats[first].popen.wait(timeout=10) == -signal.SIGKILL

    follower = next(pid for pid in beats if pid != first)
    wait_for(lambda: leader_pid() == follower, 60, what="the follower to take the lease")
    wait_for(
        lambda: len([s for _, s, _ in published(redis_client) if s > killed_at + timedelta(seconds=3)]) >= 3,
        60,
        what="the new leader firing",
    )
    status = leader_status(client=redis_client)
    assert status["healthy"]
    assert status["last_leader"].split(":")[-2] == str(follower)

    slots = [slot for _, slot, _ in published(redis_client)]
    assert len(slots) == len(set(slots)), "no slot fired twice across the handover"
