"""A simulation of scale: the same day-shaped load on 10 and on 100 nodes, cost per operation side by side.

For each cluster size N (one invocation, one after the other, on the benchmark database and Redis DB), the
same cluster capacity (`--cluster-cpu`, split evenly over the N nodes) and the same arrivals, replayed on a
simulated clock through the real services, in this process (no Celery worker; the `jobs.execute` messages
are published to the benchmark Redis DB for real and dropped at the end):

  nodes:      N nodes registered (nodes.services.node_register), heartbeating every
              SCHEDULER_HEARTBEAT_SECONDS of simulated time, staggered, as worker/heartbeat.py's
              Heartbeat.beat does (executions_held(running) then node_heartbeat_record);
  arrivals:   RUNS_PER_DAY x SCALE runs a day: a share BURST_SHARE fires at the top of the hour (cron), as
              beat fires it (jobs.services.firing.slots_fire, batches of 500); the rest is a steady Poisson
              trickle of "run now" (jobs.services.jobs.job_trigger: create, place one, queue, one
              transaction). The window runs from one minute before the hour to MINUTES - 1 after it;
  beat tasks: every SCHEDULER_SWEEP_SECONDS the placement pass (jobs.tasks.dispatch_pending: what waits
              for capacity), the reaper (jobs.tasks.reap_nodes: nodes_reap_stale with the jobs recovery)
              and the retry sweep (jobs.tasks.sweep_retries);
  workers:    each `jobs.execute` published to a node's queue is claimed there (execution_claim) a moment
              later and finished (execution_finish, 2% failed) after a log-normal run time, as
              worker/runner.py does;
  a host dies halfway: its heartbeats stop and its last one is back-dated past
              SCHEDULER_NODE_OFFLINE_AFTER_SECONDS, so the next reaper pass reaps it and recovers its runs
              (the simulated clock runs faster than the wall clock: the offline limit is set to an hour for
              the others, which must never be reaped).

Events run in simulated-time order as fast as the database answers. Statements per operation are counted
on every other operation of a kind (Django's query log, `force_debug_cursor`: it sees the ORM's statements
and the hand-written prepared SQL of scheduler_project.db.sql_execute alike, which bypasses
connection.execute_wrapper; BEGIN, COMMIT and savepoints are round trips too and are counted), time
(perf_counter) on the others, so the counting does not weigh on the times (the few beat-burst batches are
counted and timed alike). Batches (beat burst, placement pass) are also given per execution; placement
passes are filed by outcome: placed some, none fit (a backlog waits for capacity), idle (nothing pending).

Run: .venv/bin/python bench/scale_sim.py [--sizes 10,100] [--scale 0.3] [--minutes 5]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import os
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

os.environ.setdefault("SCHEDULER_LOG_LEVEL", "ERROR")  # the dead host's runs log a WARNING each

from _setup import BENCH_BROKER_URL, machine, setup  # noqa: E402 - after the log level

# DEBUG off, as in production: the statements are logged only while an operation is counted.
os.environ["DEBUG"] = "0"
JOB_CPU = Decimal("0.5")
JOB_MEMORY_MB = 256
FIRE_BATCH = 500  # jobs.beat.scheduler.FIRE_BATCH_MAX
CLAIM_DELAY = 0.05  # simulated seconds from publish to the worker's claim
FAIL_SHARE = 0.02


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")
    )


@dataclass
class Stat:
    """Samples of one kind of operation: statements (counted ones), ms (timed ones), units per op."""

    statements: list[int] = field(default_factory=list)
    units_counted: list[int] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    units_timed: list[int] = field(default_factory=list)
    calls: int = 0
    units: int = 0

    def per_unit_statements(self) -> float:
        units = sum(self.units_counted)
        return sum(self.statements) / units if units else float("nan")

    def per_unit_ms(self) -> list[float]:
        return [ms / u for ms, u in zip(self.ms, self.units_timed, strict=True) if u]


class Meter:
    """Runs operations, counting statements on every other call of a kind and timing the rest."""

    def __init__(self) -> None:
        self.stats: dict[str, Stat] = defaultdict(Stat)
        self.calls: dict[str, int] = defaultdict(int)

    def run(self, kind: str, fn: Callable[[], Any], units: Callable[[Any], int] = lambda _: 1,
            both: bool = False, sort: Callable[[Any], str] | None = None) -> Any:  # fmt: skip
        """`both`: count and time this call; `sort(result)`: the kind it is filed under (else `kind`)."""
        from django.db import connection

        self.calls[kind] += 1
        counted = both or self.calls[kind] % 2 == 0
        if counted:
            connection.force_debug_cursor = True
            connection.queries_log.clear()
        started = time.perf_counter()
        try:
            result = fn()
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            if counted:
                connection.force_debug_cursor = False
                count = len(connection.queries_log)
                if os.environ.get("SIM_TRACE") == kind:
                    for query in connection.queries_log:
                        print(f"  [{kind}] {' '.join(query['sql'].split())[:160]}")
        n = units(result)
        stat = self.stats[sort(result) if sort else kind]
        stat.calls += 1
        stat.units += n
        if counted:
            stat.statements.append(count)
            stat.units_counted.append(n)
        if not counted or both:
            stat.ms.append(elapsed)
            stat.units_timed.append(n)
        return result


@dataclass
class Load:
    runs_per_day: float
    scale: float
    burst_share: float
    minutes: float
    cluster_cpu: int
    median_run_s: float
    seed: int

    @property
    def burst(self) -> int:
        return round(self.runs_per_day * self.scale * self.burst_share / 24)

    @property
    def trickle_per_s(self) -> float:
        return self.runs_per_day * self.scale * (1 - self.burst_share) / 86400


def _reset() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE jobs_job, nodes_node RESTART IDENTITY CASCADE")
    import redis

    redis.Redis.from_url(BENCH_BROKER_URL).flushdb()


def _jobs(count: int) -> list[int]:
    from django.contrib.auth import get_user_model

    from jobs.models import Job

    owner = get_user_model().objects.get_or_create(username="bench")[0]
    rows = Job.objects.bulk_create(
        Job(owner=owner, name=f"sim{i}", kind="python", payload={"handler": "echo"}, cpu=JOB_CPU,
            memory_mb=JOB_MEMORY_MB)
        for i in range(count)
    )  # fmt: skip
    return [row.pk for row in rows]


def simulate(size: int, load: Load) -> tuple[Meter, dict[str, Any]]:
    """Run the load on `size` nodes; the meter and a few totals."""
    from django.conf import settings
    from django.db import connection

    from jobs import messages, tasks
    from jobs.executors import Outcome
    from jobs.messages import ExecuteMessage
    from jobs.models import Execution, Job
    from jobs.services import execution_claim, execution_finish, executions_held, job_trigger
    from jobs.services.firing import Slot, pending_place_pass, slots_fire
    from nodes.models import Node
    from nodes.services import node_heartbeat_record, node_register

    rng = random.Random(load.seed)  # noqa: S311 - a simulation, the same arrivals for every size
    _reset()
    settings.SCHEDULER_NODE_OFFLINE_AFTER_SECONDS = 3600.0  # see the docstring: only the dead host is reaped
    heartbeat_s = float(settings.SCHEDULER_HEARTBEAT_SECONDS)
    sweep_s = float(settings.SCHEDULER_SWEEP_SECONDS)
    meter = Meter()
    per_node_cpu = Decimal(load.cluster_cpu) / size
    names = [f"sim{i}@scale" for i in range(size)]
    incarnation = {name: uuid.uuid4() for name in names}
    for i, name in enumerate(names):
        meter.run("register", partial(
            node_register, name=name, hostname="scale", ip_address=None, cpu_capacity=per_node_cpu,
            memory_mb_capacity=int(per_node_cpu * 1024), labels={"zone": f"z{i % 3}"}, version="bench",
            incarnation=incarnation[name],
        ))  # fmt: skip
    start_s, end_s = -60.0, load.minutes * 60 - 60
    trickle: list[float] = []
    t = start_s
    while True:
        t += rng.expovariate(load.trickle_per_s)
        if t >= end_s:
            break
        trickle.append(t)
    burst_jobs = _jobs(load.burst)
    trickle_jobs = _jobs(len(trickle))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    jobs_by_id = Job.objects.in_bulk(trickle_jobs)

    seq = itertools.count()
    events: list[tuple[float, int, str, Any]] = []

    def push(at: float, kind: str, data: Any = None) -> None:
        heapq.heappush(events, (at, next(seq), kind, data))

    for i, name in enumerate(names):
        push(start_s + heartbeat_s * i / size, "heartbeat", name)
    for at in itertools.takewhile(lambda x: x < end_s, itertools.count(start_s + 0.5, sweep_s)):
        push(at, "sweep")
    push(0.0, "burst")
    for at, pk in zip(trickle, trickle_jobs, strict=True):
        push(at, "trickle", pk)
    dead = names[-1]
    push((end_s + 0.0) / 2, "die", dead)

    now = {"t": start_s}
    published: list[tuple[int, str]] = []
    original_publish = messages.execute_publish_now

    def publish(messages: Sequence[ExecuteMessage]) -> None:  # what the nodes' queues receive
        published.extend((m.execution_id, m.queue.removeprefix("node.")) for m in messages)
        original_publish(messages)

    def deliver() -> None:
        for pk, node in published:
            push(now["t"] + CLAIM_DELAY, "claim", (pk, node))
        published.clear()

    totals: dict[str, Any] = defaultdict(int)
    alive = set(names)
    slot = datetime.now(UTC).replace(microsecond=0)
    messages.execute_publish_now = publish
    wall = time.perf_counter()
    try:
        while events:
            at, _, kind, data = heapq.heappop(events)
            now["t"] = at
            if kind == "heartbeat":
                if data not in alive:
                    continue

                def beat(name: str = data) -> None:
                    held = executions_held(node_name=name, statuses=["running"])
                    node_heartbeat_record(name=name, cpu_percent=50.0, memory_used_mb=512,
                                          running_count=len(held))  # fmt: skip

                meter.run("heartbeat", beat)
                if at + heartbeat_s < end_s:
                    push(at + heartbeat_s, "heartbeat", data)
            elif kind == "trickle":
                meter.run("place: run now", partial(job_trigger, job=jobs_by_id[data]))
                totals["created"] += 1
            elif kind == "burst":
                for i in range(0, len(burst_jobs), FIRE_BATCH):
                    batch = [Slot(job_id=pk, scheduled_for=slot) for pk in burst_jobs[i : i + FIRE_BATCH]]
                    meter.run("place: beat burst", partial(slots_fire, slots=batch), len, both=True)
                    totals["created"] += len(batch)
            elif kind == "sweep":
                # jobs.tasks.dispatch_pending's body (the task returns nothing; this says how many it placed)

                def outcome(placed: int, waiting: int = totals["pending_now"]) -> str:
                    return "pass: placed some" if placed else "pass: none fit" if waiting else "pass: idle"

                meter.run("placement pass", pending_place_pass, lambda placed: placed, sort=outcome)
                reaped = meter.run("reaper pass", tasks.reap_nodes, both=dead not in alive)
                if reaped:  # that pass is reported on its own line, not among the passes with nothing to do
                    stat = meter.stats["reaper pass"]
                    totals["reaped"] += len(reaped)
                    totals["reap_statements"] = stat.statements.pop()
                    totals["reap_ms"] = stat.ms.pop()
                    stat.units_counted.pop()
                    stat.units_timed.pop()
                meter.run("retry sweep", tasks.sweep_retries)
                totals["pending_now"] = Execution.objects.filter(status="pending").count()
                totals["pending_max"] = max(totals["pending_max"], totals["pending_now"])
            elif kind == "die":
                alive.discard(data)
                Node.objects.filter(name=data).update(
                    last_heartbeat_at=datetime.now(UTC) - timedelta(hours=2)
                )
            elif kind == "claim":
                pk, name = data
                if name not in alive:
                    continue
                claim = meter.run("claim", partial(
                    execution_claim, execution_id=pk, node_name=name, pid=os.getpid(),
                    incarnation=incarnation[name],
                ))  # fmt: skip
                if claim is None:
                    totals["claim_none"] += 1
                    continue
                run_s = min(600.0, rng.lognormvariate(math.log(load.median_run_s), 0.8))
                push(at + run_s, "finish", (claim, name))
            elif kind == "finish":
                claim, name = data
                if name not in alive:
                    continue
                status = "failed" if rng.random() < FAIL_SHARE else "succeeded"
                meter.run("finish", partial(
                    execution_finish, execution_id=claim.execution_id, claim_token=claim.claim_token,
                    outcome=Outcome(status=status, output="ok\n"), retries_left=claim.retries_left,
                ))  # fmt: skip
                totals["finished"] += 1
            deliver()
    finally:
        messages.execute_publish_now = original_publish
    totals["wall_s"] = time.perf_counter() - wall
    totals["sim_s"] = end_s - start_s
    totals["unfinished"] = Execution.objects.filter(status__in=["pending", "queued", "running"]).count()
    totals["executions"] = Execution.objects.count()
    _reset()
    return meter, totals


ROWS = [
    ("heartbeat", "per heartbeat"),
    ("place: run now", "per run-now placement"),
    ("place: beat burst", "per execution (batch)"),
    ("pass: placed some", "per pass"),
    ("pass: none fit", "per pass (backlog waits)"),
    ("pass: idle", "per pass (nothing pending)"),
    ("claim", "per claim"),
    ("finish", "per finish"),
    ("reaper pass", "per pass"),
    ("retry sweep", "per pass"),
]


def _row(stat: Stat, per_unit: bool) -> tuple[float, float, float, int]:
    if per_unit:
        ms = stat.per_unit_ms()
        return (
            stat.per_unit_statements(),
            percentile(ms, 50),
            percentile(ms, 99),
            stat.units,
        )
    mean = sum(stat.statements) / len(stat.statements) if stat.statements else float("nan")
    return mean, percentile(stat.ms, 50), percentile(stat.ms, 99), stat.calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100")
    parser.add_argument("--runs-per-day", type=float, default=1_000_000)
    parser.add_argument("--scale", type=float, default=0.3, help="share of the day's rate simulated")
    parser.add_argument("--burst-share", type=float, default=0.3, help="share of the runs fired at :00")
    parser.add_argument("--minutes", type=float, default=5.0, help="simulated window (from :59)")
    parser.add_argument("--cluster-cpu", type=int, default=0, help="0: enough for a quarter of the burst")
    parser.add_argument("--median-run", type=float, default=20.0, help="median run time, simulated s")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    load = Load(args.runs_per_day, args.scale, args.burst_share, args.minutes, args.cluster_cpu,
                args.median_run, args.seed)  # fmt: skip
    if not load.cluster_cpu:
        slots = load.burst / 4 + 2 * load.trickle_per_s * load.median_run_s * 1.4
        step = math.lcm(*sizes)
        load.cluster_cpu = max(step, math.ceil(slots * float(JOB_CPU) / step) * step)
    setup()
    from django.conf import settings

    results = {size: simulate(size, load) for size in sizes}
    print(f"machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"load: {load.runs_per_day * load.scale:,.0f} runs/day ({load.scale:g} x {load.runs_per_day:,.0f}): "
        f"burst of {load.burst:,} at :00 + {load.trickle_per_s:.2f}/s run-now trickle; {load.minutes:g} "
        f"simulated min from :59; cluster {load.cluster_cpu} cpu split over the nodes; jobs {JOB_CPU} cpu, "
        f"median run {load.median_run_s:g} s; heartbeat every {settings.SCHEDULER_HEARTBEAT_SECONDS:g} s, "
        f"sweeps every {settings.SCHEDULER_SWEEP_SECONDS:g} s (simulated); one host dies halfway"
    )
    for size, (_, totals) in results.items():
        print(
            f"  {size:>3} nodes: {totals['executions']:,} executions, {totals['finished']:,} finished, "
            f"{totals['unfinished']:,} still active at the end, pending max {totals['pending_max']:,}, "
            f"{totals['reaped']} node reaped; "
            f"{totals['sim_s']:.0f} simulated s in {totals['wall_s']:.0f} wall s"
        )
    first, last = sizes[0], sizes[-1]
    header = (
        f"{'operation':<20} {'unit':<27}"
        + "".join(f" {f'{s}: stmts':>10} {'p50 ms':>7} {'p99 ms':>7} {'n':>6}" for s in sizes)
        + f" {f'stmts {last}/{first}':>11} {f'p50 {last}/{first}':>9} {f'p99 {last}/{first}':>9}"
    )
    print(header)
    print("-" * len(header))
    verdict = []
    for kind, unit in ROWS:
        variants = [(kind, unit, False)]
        if kind in ("place: beat burst", "pass: placed some"):
            variants = [(kind, unit, kind == "place: beat burst")]
            if kind == "pass: placed some":
                variants.append((kind, "per execution placed", True))
        for kind_, unit_, per_unit in variants:
            line = f"{kind_:<20} {unit_:<27}"
            rows = {}
            for size in sizes:
                stat = results[size][0].stats[kind_]
                rows[size] = _row(stat, per_unit)
                stmts, p50, p99, n = rows[size]
                line += f" {stmts:>10.2f} {p50:>7.3f} {p99:>7.3f} {n:>6}"
            ratios = [rows[last][i] / rows[first][i] if rows[first][i] else float("nan") for i in range(3)]
            line += f" {ratios[0]:>11.2f} {ratios[1]:>9.2f} {ratios[2]:>9.2f}"
            print(line)
            if kind_ in ("heartbeat", "place: run now", "place: beat burst"):
                verdict.append((kind_, ratios))
    for size in sizes:
        totals = results[size][1]
        if totals["reaped"]:
            print(f"  {size} nodes, the reaper pass that reaped the dead host and recovered its runs: "
                  f"{totals['reap_statements']} statements, {totals['reap_ms']:.1f} ms")  # fmt: skip
    flat = all(r[0] <= 1.2 and r[1] <= 1.2 for _, r in verdict)
    print(
        f"done-when (per-placement and per-heartbeat statements and p50 within 20% from {first} to {last} "
        f"nodes): {'holds' if flat else 'does NOT hold'}"
    )


if __name__ == "__main__":
    main()
