"""End-to-end no-op jobs/s through the scheduler vs raw Celery no-op tasks, same broker and worker.

One real `celery worker` (prefork, -c CONCURRENCY) against a dedicated database and Redis DB:
  raw:   M `celery.accumulate` tasks (a built-in no-op) published at once; done when the queue is drained
         and nothing is left unacknowledged.
  jobs:  M python `echo` jobs, each fired once with `jobs.fire` (job_id, scheduled_for) -> Execution created,
         node reserved, `jobs.execute` published to the node queue -> claimed, run, finished, released;
         done when all M executions are terminal (time: publish of the first fire to the last finished_at).
Each path is warmed up first (50 tasks / 50 jobs, not counted).

Run: .venv/bin/python bench/throughput.py [--count 1000] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from _setup import BENCH_BROKER_URL, BENCH_DATABASE_URL, ROOT, machine, setup


def start_worker(concurrency: int) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        DATABASE_URL=BENCH_DATABASE_URL,
        CELERY_BROKER_URL=BENCH_BROKER_URL,
        SCHEDULER_NODE_CPU="9000",
        SCHEDULER_NODE_MEMORY_MB="10000000",
        SCHEDULER_MISFIRE_GRACE_SECONDS="3600",
        SCHEDULER_HEARTBEAT_SECONDS="2",
    )
    argv = [
        sys.executable, "-m", "celery", "-A", "scheduler_project", "worker", "-n", "bench@benchhost",
        "-c", str(concurrency), "-Q", "default", "--loglevel", "WARNING",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    log = open("/tmp/bench-throughput-worker.log", "wb")  # noqa: SIM115, S108 - lives as long as the worker
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
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
    return time.perf_counter() - started


def run_jobs(app, count: int) -> float:  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model
    from django.db.models import Max

    from jobs.models import Execution, Job
    from jobs.services import job_create

    owner, _ = get_user_model().objects.get_or_create(username="bench")
    jobs = [
        job_create(owner=owner, name=f"noop-{i}", kind="python", payload={"handler": "echo", "kwargs": {}})
        for i in range(count)
    ]
    slot = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    started = datetime.now(UTC)
    with app.producer_or_acquire() as producer:
        for job in jobs:
            app.send_task(
                "jobs.fire", kwargs={"job_id": job.pk, "scheduled_for": slot.isoformat()}, producer=producer
            )
    done = Execution.objects.filter(job__in=[j.pk for j in jobs], status__in=list(Execution.TERMINAL))
    # Polled slowly (this count competes for the same 2 cores); the end is the last finished_at, not the poll.
    wait(lambda: done.count() >= count, 900, "job executions", every=0.5)
    last = done.aggregate(last=Max("finished_at"))["last"]
    elapsed = (last - started).total_seconds()
    succeeded = Execution.objects.filter(
        job__in=[j.pk for j in jobs], status=Execution.Status.SUCCEEDED
    ).count()
    if succeeded != count:
        print(f"warning: {count - succeeded} executions did not succeed", file=sys.stderr)
    Job.objects.filter(pk__in=[j.pk for j in jobs]).delete()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    setup()
    import redis

    from jobs.models import Job
    from nodes.models import Node
    from scheduler_project.celery import app

    broker = redis.Redis.from_url(BENCH_BROKER_URL)
    broker.flushdb()
    Job.objects.all().delete()
    Node.objects.all().delete()
    worker = start_worker(args.concurrency)
    try:
        wait(lambda: Node.objects.filter(status=Node.Status.ONLINE).exists(), 120, "the worker's node")
        run_raw(app, broker, 50)  # warm up the pool
        raw = run_raw(app, broker, args.count)
        run_jobs(app, 50)  # warm up the jobs path too (imports, first queries, connections)
        jobs = run_jobs(app, args.count)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        broker.flushdb()
    print(f"machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"one worker, prefork -c {args.concurrency}, Redis broker, {args.count} tasks or jobs each")
    header = f"{'path':<52} {'count':>6} {'seconds':>8} {'per s':>8}"
    print(header)
    print("-" * len(header))
    print(
        f"{'raw Celery no-op (celery.accumulate)':<52} {args.count:>6} {raw:>8.2f} {args.count / raw:>8.1f}"
    )
    label = "jobs: fire -> Execution -> execute -> finish (echo)"
    print(f"{label:<52} {args.count:>6} {jobs:>8.2f} {args.count / jobs:>8.1f}")
    print(f"ratio jobs / raw: {raw / jobs:.2f}x")


if __name__ == "__main__":
    main()
