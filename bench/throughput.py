"""End-to-end no-op jobs/s through the scheduler vs raw Celery no-op tasks, same broker, worker and settings.

One real `celery worker` (prefork, -c CONCURRENCY) and one real `celery beat` (jobs.beat:JobScheduler)
against a dedicated database and Redis DB, for the whole run. Each round measures three paths, one after
the other; the table gives the median of ROUNDS rounds:
  raw:      M `celery.accumulate` tasks (a built-in no-op) published at once; done when the queue is drained
            and nothing is left unacknowledged.
  beat:     M python `echo` jobs whose interval schedule starts at the same slot T (created in bulk, a few
            seconds ahead); beat fires the slot for all of them (one INSERT per batch, placement, one
            `jobs.execute` each); time: T to the last finished_at.
  run-now:  M `job_trigger` calls from this process, one after the other (what POST jobs/{id}/run/
            does); time: the first call to the last finished_at.
  bulk-run: the same M jobs run now by one `jobs_trigger_bulk` call (POST jobs/bulk-run/).
Before each path the tables are vacuumed (as autovacuum would have; the previous round deleted its jobs).
Latency is slot (scheduled_for) to started_at per execution. Round trips per job are counted in-process
over the same code (CaptureQueriesContext), commits per job from pg_stat_database during the beat path.

Run: .venv/bin/python bench/throughput.py [--count 1000] [--concurrency 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _setup import BENCH_BROKER_URL, BENCH_DATABASE_URL, ROOT, machine, setup

LOG_DIR = Path(os.environ.get("BENCH_LOG_DIR", "/tmp"))  # noqa: S108 - logs of the processes it starts
# DEBUG off, as in production: with it, Django keeps and formats every query (the raw path has none).
os.environ["DEBUG"] = "0"
ENV = {
    "DEBUG": "0",
    "DATABASE_URL": BENCH_DATABASE_URL,
    "CELERY_BROKER_URL": BENCH_BROKER_URL,
    "SCHEDULER_NODE_CPU": "9000",
    "SCHEDULER_NODE_MEMORY_MB": "10000000",
    "SCHEDULER_MISFIRE_GRACE_SECONDS": "3600",
    "SCHEDULER_HEARTBEAT_SECONDS": "2",
}


def start(argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
    log = open(LOG_DIR / log_name, "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "scheduler_project", *argv],
        cwd=ROOT,
        env=dict(os.environ, **ENV),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait(predicate, timeout: float, what: str, every: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def run_raw(app, broker, count: int) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(count):
            app.send_task("celery.accumulate", args=[i], producer=producer)
    wait(lambda: broker.llen("default") == 0 and broker.hlen("unacked") == 0, 600, "raw tasks")
    return count / (time.perf_counter() - started)


def _owner():  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get_or_create(username="bench")[0]


def _jobs(count: int, start_at: datetime | None) -> list[int]:
    from jobs.services import jobs_create_bulk

    schedule = (
        {"type": "interval", "every_seconds": 3600, "start_at": start_at.isoformat()} if start_at else None
    )
    items = [
        {"name": f"noop-{i}", "kind": "python", "payload": {"handler": "echo"}, "schedule": schedule}
        for i in range(count)
    ]
    ids: list[int] = []
    for chunk in range(0, count, 1000):
        ids += [job.pk for job in jobs_create_bulk(owner=_owner(), items=items[chunk : chunk + 1000]).jobs]
    return ids


def _finished(job_ids: list[int], count: int, since: datetime) -> tuple[float, list[float]]:
    """Jobs/s from `since` to the last finished_at, and slot -> start latencies (s)."""
    from django.db.models import Max

    from jobs.models import Execution

    done = Execution.objects.filter(job_id__in=job_ids, status__in=list(Execution.TERMINAL))
    # Polled slowly (this count competes for the same 2 cores); the end is the last finished_at, not the poll.
    wait(lambda: done.count() >= count, 900, "job executions", every=0.5)
    last = done.aggregate(last=Max("finished_at"))["last"]
    rows = done.values_list("scheduled_for", "started_at", "status")
    failed = sum(1 for _, _, status in rows if status != Execution.Status.SUCCEEDED)
    if failed:
        print(f"warning: {failed} executions did not succeed", file=sys.stderr)
    latencies = [(started - slot).total_seconds() for slot, started, _ in rows if started]
    return count / (last - since).total_seconds(), latencies


def _commits() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def vacuum() -> None:
    """What autovacuum does in a steady system: the rows the last round deleted are not scanned again."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "VACUUM ANALYZE jobs_execution, jobs_job, jobs_jobschedule, nodes_node, "
            "nodes_resourceallocation, django_celery_beat_periodictask, monitoring_executionlogchunk"
        )


def run_beat(count: int, lead: float = 6.0) -> tuple[float, list[float], float]:
    """M jobs on one slot, fired by the running beat; (jobs/s, latencies, commits per job)."""
    from jobs.models import Job

    slot = (datetime.now(UTC) + timedelta(seconds=lead + count / 2000)).replace(microsecond=0)
    ids = _jobs(count, slot)
    wait(lambda: datetime.now(UTC) >= slot - timedelta(seconds=0.5), 120, "the slot")
    before = _commits()
    rate, latencies = _finished(ids, count, slot)
    time.sleep(1.2)  # statistics are flushed about once a second
    commits = (_commits() - before) / count
    Job.objects.filter(pk__in=ids).delete()
    return rate, latencies, commits


def run_now(count: int) -> tuple[float, list[float]]:
    from jobs.models import Job
    from jobs.services import job_trigger

    ids = _jobs(count, None)
    jobs = list(Job.objects.filter(pk__in=ids))
    started = datetime.now(UTC)
    for job in jobs:
        job_trigger(job=job)
    rate, latencies = _finished(ids, count, started)
    Job.objects.filter(pk__in=ids).delete()
    return rate, latencies


def run_now_bulk(count: int) -> tuple[float, list[float]]:
    """The same, as one bulk-run (POST jobs/bulk-run/'s service): one batch for all of them."""
    from jobs.models import Job
    from jobs.services import jobs_trigger_bulk

    ids = _jobs(count, None)
    started = datetime.now(UTC)
    jobs_trigger_bulk(actor=_owner(), jobs=ids)
    rate, latencies = _finished(ids, count, started)
    Job.objects.filter(pk__in=ids).delete()
    return rate, latencies


def round_trips() -> tuple[float, float, float]:
    """Queries per job, counted in-process on the same code: a beat batch of 500 (per job), one run-now
    (create, place, queue), and one run (claim, run, finish), all in a transaction rolled back after."""
    from django.db import connection, reset_queries, transaction
    from django.test.utils import CaptureQueriesContext

    from jobs.models import Job
    from jobs.services import firing, job_trigger
    from nodes.models import Node
    from worker import identity, runner

    node = Node.objects.filter(status=Node.Status.ONLINE).first()
    assert node is not None
    identity.node_name_set(node.name)
    slot = datetime(2031, 1, 1, tzinfo=UTC)

    class Rollback(Exception):
        pass

    try:
        with transaction.atomic():
            jobs = list(Job.objects.filter(pk__in=_jobs(501, None)))
            reset_queries()
            with CaptureQueriesContext(connection) as fired:
                ids = firing.slots_fire(
                    slots=[firing.Slot(job_id=j.pk, scheduled_for=slot) for j in jobs[:500]]
                )
            with CaptureQueriesContext(connection) as triggered:
                execution = job_trigger(job=jobs[500])
            with CaptureQueriesContext(connection) as ran:
                runner.execution_run(execution_id=ids[0])
            raise Rollback
    except Rollback:
        pass
    # Inside the outer transaction each atomic block is a savepoint (2 statements), as BEGIN/COMMIT are.
    assert execution is not None
    return len(fired) / 500, len(triggered), len(ran)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    setup()
    import redis

    from jobs.beat.lease import LEASE_KEY
    from jobs.models import Job
    from nodes.models import Node
    from scheduler_project.celery import app

    broker = redis.Redis.from_url(BENCH_BROKER_URL)
    broker.flushdb()
    Job.objects.all().delete()
    Node.objects.all().delete()
    worker = start(
        ["worker", "-n", "bench@benchhost", "-c", str(args.concurrency), "-Q", "default", "--loglevel",
         "WARNING", "--without-mingle", "--without-gossip"],
        "bench-throughput-worker.log",
    )  # fmt: skip
    broker.delete(LEASE_KEY)
    beat = start(
        ["beat", "--loglevel", "WARNING", "-s", str(LOG_DIR / "bench-beat-schedule")], "bench-beat.log"
    )
    results: dict[str, list[float]] = {"raw": [], "beat": [], "now": [], "bulk": []}
    latency: dict[str, list[float]] = {"beat": [], "now": [], "bulk": []}
    commits: list[float] = []
    try:
        wait(lambda: Node.objects.filter(status=Node.Status.ONLINE).exists(), 120, "the worker's node")
        run_raw(app, broker, 50)  # warm up the pool
        run_now(50)
        run_beat(50, lead=3)
        for n in range(args.rounds):
            vacuum()
            results["raw"].append(run_raw(app, broker, args.count))
            rate, lat, per_job = run_beat(args.count)
            results["beat"].append(rate)
            latency["beat"] += lat
            commits.append(per_job)
            vacuum()
            rate, lat = run_now(args.count)
            results["now"].append(rate)
            latency["now"] += lat
            vacuum()
            rate, lat = run_now_bulk(args.count)
            results["bulk"].append(rate)
            latency["bulk"] += lat
            print(f"round {n + 1}: raw {results['raw'][-1]:.1f}/s, beat {results['beat'][-1]:.1f}/s, "
                  f"run-now {results['now'][-1]:.1f}/s, bulk-run {results['bulk'][-1]:.1f}/s",
                  file=sys.stderr)  # fmt: skip
        fire_q, now_q, run_q = round_trips()
    finally:
        for proc in (beat, worker):
            proc.terminate()
        for proc in (beat, worker):
            proc.wait(timeout=60)
        broker.flushdb()
    raw = statistics.median(results["raw"])
    print(f"machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"one worker, prefork -c {args.concurrency}, Redis broker, {args.count} tasks or jobs per path, "
        f"median of {args.rounds} rounds"
    )
    header = (
        f"{'path':<44} {'per s (median)':>14} {'runs':>26} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'queries/job':>12}"
    )
    print(header)
    print("-" * len(header))
    runs = " ".join(f"{r:.0f}" for r in results["raw"])
    print(
        f"{'raw Celery no-op (celery.accumulate)':<44} {raw:>14.1f} {runs:>26} {1:>6.2f} "
        f"{'':>8} {'':>8} {'':>12}"
    )
    rows = [
        ("beat", "jobs, beat-fired (batch insert -> execute)", f"{fire_q:.2f}+{run_q}"),
        ("now", "jobs, run now, one call per job (job_trigger)", f"{now_q}+{run_q}"),
        ("bulk", "jobs, run now, one bulk-run of them all", f"{fire_q:.2f}+{run_q}"),
    ]
    for key, label, queries in rows:
        median = statistics.median(results[key])
        runs = " ".join(f"{r:.0f}" for r in results[key])
        print(
            f"{label:<44} {median:>14.1f} {runs:>26} {median / raw:>6.2f} "
            f"{pct(latency[key], 0.5) * 1000:>8.0f} {pct(latency[key], 0.99) * 1000:>8.0f} {queries:>12}"
        )
    print(
        "transactions per job on the beat path (pg_stat_database xact_commit, all processes, reads too): "
        f"{statistics.median(commits):.2f}"
    )
    print("queries/job: firing (per job of a 500-slot batch, or one run-now) + the worker's run")


if __name__ == "__main__":
    main()
