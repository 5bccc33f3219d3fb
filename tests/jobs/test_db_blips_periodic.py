"""A lost database connection (every backend of the database terminated, three times 2 s apart) with a real
worker and beat: beat's firing and bookkeeping, the heartbeat, placement passes and alert evaluation carry
on at their next tick.

Beat meets a blip between its ticks with Django's health check at the start of the next one, so the
first test mostly exercises the worker side (a pool process skips that check right after a task and meets
the dead connection in its next one). The second cuts beat's ticks off in their middle (BlipScheduler),
where a tick that kept half-updated state would stay wrong.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from jobs.beat import JobScheduler, leader_status
from jobs.beat.entries import BeatEntry
from jobs.beat.lease import LEASE_KEY
from jobs.models import Execution, Job
from jobs.services import job_create, job_trigger
from monitoring.models import Alert, AlertDelivery
from monitoring.services import alert_rule_create
from nodes.models import Node
from tests.conftest import Proc, database_connect, wait_for
from tests.factories import NodeFactory, UserFactory

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WORKER = "blip1@testhost"
GHOST = "ghost@testhost"  # a node row no worker runs: the node_offline rule fires for it after the blips
POOL = {"pool": "blip"}  # the waiting job's selector; the worker's node gets these labels after the blips
FAST = {
    "SCHEDULER_SWEEP_SECONDS": "1",
    "SCHEDULER_ALERT_EVALUATE_SECONDS": "1",
    "SCHEDULER_HEARTBEAT_SECONDS": "1",
    "SCHEDULER_NODE_CPU": "4",
    "SCHEDULER_NODE_MEMORY_MB": "4096",
}
BEAT = {**FAST, "SCHEDULER_BEAT_LEASE_SECONDS": "3", "SCHEDULER_BEAT_FLUSH_SECONDS": "1"}
BLIPS, BLIP_GAP_SECONDS = 3, 2.0
# The tasks beat sends every few seconds: meeting a lost connection, each logs a line and waits for its next
# tick instead of failing (jobs.execute is the worker's: its runs have their own recovery).
PERIODIC_TASKS = {
    "jobs.dispatch_pending",
    "jobs.sweep_retries",
    "jobs.reap_nodes",
    "jobs.reconcile_broker",
    "monitoring.evaluate_alerts",
}
TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
ARM_KEY = "tests:blip"  # BlipScheduler terminates the backends at <ARM_KEY>:<point> once, deleting the key


def terminate_backends() -> int:
    """Terminate every other connection to the test database (this process's own too); how many."""
    with database_connect() as admin:
        return len(admin.execute(TERMINATE).fetchall())


def _terminate_after(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
    # An execute_wrapper: the statement runs, then the connection dies under the open transaction.
    result = execute(sql, params, many, context)
    terminate_backends()
    return result


class BlipScheduler(JobScheduler):
    """Our scheduler, terminating every backend of its database at the point of a tick a test arms:
    "fire" (inside a firing transaction), "flush" (inside the run bookkeeping's transaction), "reload"
    (reading the rows that changed), "schedule-rows" (between noticing an edited schedule row and reading
    it). Started by dotted path in a real `celery beat`."""

    def _armed(self, point: str) -> bool:
        return bool(self.lease.client.delete(f"{ARM_KEY}:{point}"))

    def _load(self, pks: list[int], now: datetime) -> None:
        if pks and self._armed("reload"):
            terminate_backends()
        super()._load(pks, now)

    def _schedule_fingerprints(self) -> dict[str, str]:
        fingerprints = super()._schedule_fingerprints()
        if self._armed("schedule-rows"):
            terminate_backends()
        return fingerprints

    def fire_slots(self, batch: list[tuple[BeatEntry, datetime]]) -> list[int]:
        if not self._armed("fire"):
            return super().fire_slots(batch)
        with connection.execute_wrapper(_terminate_after):
            return super().fire_slots(batch)

    def _flush(self) -> None:
        if not (self._pending and self._armed("flush")):
            return super()._flush()
        with connection.execute_wrapper(_terminate_after):
            super()._flush()


def db_now() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]  # type: ignore[index]


def _wait(predicate: Callable[[], object], *, timeout: float, what: str, procs: tuple[Proc, ...]) -> object:
    """wait_for, with the processes' log tails in the failure message."""
    try:
        return wait_for(predicate, timeout=timeout, interval=0.5, what=what)
    except pytest.fail.Exception:
        logs = "\n".join(f"--- {p.log_path.name}\n{p.log()[-6000:]}" for p in procs)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def _tick_job(owner: Any, name: str) -> Job:
    return job_create(
        owner=owner,
        name=name,
        kind="python",
        payload={"handler": "echo", "kwargs": {"message": name}},
        schedule={"type": "interval", "every_seconds": 1},
    )


def _failed_periodic_tasks(worker: Proc) -> list[str]:
    failed = re.findall(r"Task ([\w.]+)\[[^\]]*\] raised unexpected", worker.log())
    return [name for name in failed if name in PERIODIC_TASKS]


def _assert_bookkept(job: Job) -> None:
    """Beat's run bookkeeping of a job's entry: each slot it fired up to last_run_at counted once."""
    task = PeriodicTask.objects.get(name=f"job:{job.pk}")
    assert task.last_run_at is not None
    # Read after the row: what fired later is later than its last_run_at, so the two agree at any moment.
    slots = list(
        Execution.objects.filter(job=job, attempt=1, scheduled_for__lte=task.last_run_at).values_list(
            "scheduled_for", flat=True
        )
    )
    assert len(slots) == len(set(slots)), "no slot fired twice"
    assert (task.total_run_count, task.last_run_at) == (len(slots), max(slots))


def _setup(start_worker: Any, start_beat: Any, redis_client: Any) -> dict[str, Any]:
    redis_client.delete(LEASE_KEY)
    worker = start_worker(name=WORKER, concurrency=2, queues="default", **FAST)
    online = Node.objects.filter(name=WORKER, status=Node.Status.ONLINE)
    _wait(online.exists, timeout=90, what="the worker's node online", procs=(worker,))
    # Validation wants a node with the waiting job's labels: one that is offline (no worker runs it).
    NodeFactory(name="parked@testhost", labels=POOL, status=Node.Status.OFFLINE)
    owner = UserFactory()
    tick = _tick_job(owner, "blip-tick")
    waiter = job_create(
        owner=owner, name="blip-waiter", kind="python", payload={"handler": "echo"}, node_selector=POOL
    )
    with transaction.atomic():
        waiting = job_trigger(job=waiter)  # pending: no online node has the labels yet
    pending_rule = alert_rule_create(
        name="waits", kind="pending_too_long", params={"seconds": 1}, job=waiter.pk
    )
    ghost_rule = alert_rule_create(name="ghost", kind="node_offline", params={"node": GHOST})
    beat = start_beat("beat1", **BEAT)  # the default scheduler: jobs.beat:JobScheduler
    return {
        "worker": worker,
        "beat": beat,
        "tick": tick,
        "waiting": waiting,
        "pending_rule": pending_rule,
        "ghost_rule": ghost_rule,
    }


@pytest.mark.parametrize("round_", [1, 2, 3])  # each scenario three times in a row
def test_beat_heartbeat_placement_and_alerts_carry_on_after_terminated_connections(
    round_, start_worker, start_beat, redis_client
) -> None:
    s = _setup(start_worker, start_beat, redis_client)
    procs = (s["worker"], s["beat"])
    tick: Job = s["tick"]
    done = Execution.objects.filter(job=tick, status=Execution.Status.SUCCEEDED)
    _wait(lambda: done.count() >= 3, timeout=120, what="3 runs of the interval job", procs=procs)
    waits = Alert.objects.filter(rule=s["pending_rule"])
    firing = waits.filter(state=Alert.State.FIRING)
    _wait(firing.exists, timeout=60, what="the pending alert firing", procs=procs)
    assert Execution.objects.get(pk=s["waiting"].pk).status == Execution.Status.PENDING
    leader = leader_status(client=redis_client)["leader"]
    assert leader is not None

    terminated = []
    for n in range(BLIPS):
        if n:
            time.sleep(BLIP_GAP_SECONDS)
        terminated.append(terminate_backends())
    connection.close()  # ours was terminated too
    assert terminated[0] >= 3, f"beat, the heartbeat and the pool had connections: {terminated}"
    after = db_now()
    wall_after = datetime.now(UTC)

    # Placement: the waiting execution fits once the node has its labels; only a placement pass places it.
    Node.objects.filter(name=WORKER).update(labels=POOL)
    NodeFactory(name=GHOST, status=Node.Status.OFFLINE, last_heartbeat_at=None)

    new_runs = done.filter(scheduled_for__gt=wall_after)
    _wait(lambda: new_runs.count() >= 5, timeout=120, what="5 runs fired after the blips", procs=procs)
    placed = Execution.objects.filter(pk=s["waiting"].pk, status=Execution.Status.SUCCEEDED)
    _wait(placed.exists, timeout=90, what="the waiting execution placed by a pass and run", procs=procs)
    resolved = waits.filter(state=Alert.State.RESOLVED, resolved_at__gt=after)
    _wait(resolved.exists, timeout=90, what="the pending alert resolved after the blips", procs=procs)
    ghost = Alert.objects.filter(rule=s["ghost_rule"], fired_at__gt=after)
    _wait(ghost.exists, timeout=90, what="the node_offline alert fired after the blips", procs=procs)
    sent = AlertDelivery.objects.filter(alert__in=ghost, status=AlertDelivery.Status.SENT)
    _wait(sent.exists, timeout=90, what="the node_offline alert delivered", procs=procs)
    beats_later = Node.objects.filter(name=WORKER, last_heartbeat_at__gt=after + timedelta(seconds=3))
    _wait(beats_later.exists, timeout=60, what="the node's heartbeat advancing after the blips", procs=procs)
    # Beat's own bookkeeping (last_run_at of its job and sweep entries) is written after the blips too.
    bookkept = PeriodicTask.objects.filter(
        name__in=[f"job:{tick.pk}", "jobs.dispatch_pending", "monitoring.evaluate_alerts"],
        last_run_at__gt=wall_after,
    )
    _wait(lambda: bookkept.count() == 3, timeout=60, what="beat's run bookkeeping written", procs=procs)

    assert all(p.alive() for p in procs), "beat and worker survived"
    status = leader_status(client=redis_client)
    assert status["healthy"]
    assert status["leader"] == leader, "the leader kept its lease through the blips"
    slots = Counter(Execution.objects.filter(job=tick, attempt=1).values_list("scheduled_for", flat=True))
    assert [slot for slot, n in slots.items() if n > 1] == [], "no slot fired twice"
    assert _failed_periodic_tasks(s["worker"]) == [], "periodic tasks wait for their next tick"
    assert "Traceback" not in s["beat"].log()


def test_beat_ticks_cut_off_by_terminated_connections_are_done_again_on_the_next_one(
    start_beat, redis_client
) -> None:
    points = ("fire", "flush", "reload", "schedule-rows")
    redis_client.delete(LEASE_KEY, *(f"{ARM_KEY}:{point}" for point in points))
    owner = UserFactory()
    first = _tick_job(owner, "blip-first")
    beat = start_beat("beat1", scheduler=f"{__name__}:BlipScheduler", **BEAT)
    procs = (beat,)
    fired = Execution.objects.filter(job=first)
    _wait(lambda: fired.count() >= 3, timeout=90, what="3 slots of the first job fired", procs=procs)

    def blip_at(point: str, *, then: Callable[[], object] = lambda: None) -> None:
        redis_client.set(f"{ARM_KEY}:{point}", 1)
        then()
        _wait(lambda: not redis_client.exists(f"{ARM_KEY}:{point}"), timeout=60, what=point, procs=procs)
        connection.close()  # terminated with the others

    blip_at("fire")  # the transaction that inserted the slot's execution dies before its commit
    time.sleep(BLIP_GAP_SECONDS)
    blip_at("flush")  # the bookkeeping's UPDATE ran, its commit meets a dead connection
    time.sleep(BLIP_GAP_SECONDS)
    # The second job's row is being read when the connection dies: the next tick must read it again.
    second: list[Job] = []
    blip_at("reload", then=lambda: second.append(_tick_job(owner, "blip-second")))
    after = datetime.now(UTC)
    # (Before any other edit: the next change would make beat look again anyway.)
    second_fired = Execution.objects.filter(job=second[0], scheduled_for__gt=after)
    _wait(lambda: second_fired.count() >= 3, timeout=60, what="the job created as beat read it", procs=procs)

    # The jobs' interval row, edited in place (as in the admin), is being read when the connection dies.
    interval = IntervalSchedule.objects.get(pk=PeriodicTask.objects.get(name=f"job:{first.pk}").interval_id)
    interval.every = 2
    blip_at("schedule-rows", then=interval.save)
    edited = datetime.now(UTC)

    def every_two_seconds() -> bool:
        slots = (
            fired.filter(scheduled_for__gt=edited)
            .order_by("-scheduled_for")
            .values_list("scheduled_for", flat=True)
        )
        newest = list(slots[:3])
        steps = {newer - older for newer, older in itertools.pairwise(newest)}
        return len(newest) == 3 and steps == {timedelta(seconds=2)}

    _wait(every_two_seconds, timeout=60, what="the first job firing on its edited interval", procs=procs)
    assert beat.alive()
    for job in (first, second[0]):
        _assert_bookkept(job)
    log = beat.log()
    assert "Traceback" not in log, "a database error is one line in beat's log"
    assert log.count("beat: database error, retrying next tick") >= 3  # flush, reload, schedule rows
