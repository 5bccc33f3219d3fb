"""History at scale: the execution list, its filters, the dashboard and /metrics at 10k, 100k and 1M rows.

One table grows: executions are added by COPY (psycopg 3) to reach each size, ANALYZE, then every endpoint
is requested --requests times through the real Django stack (django.test.Client, DEBUG off, the summary
and dashboard caches off: SCHEDULER_METRICS_CACHE_SECONDS=0) as an operator and as a plain submitter who
owns a tenth of the jobs. The mix: 1,000 jobs of 5 owners, 10 nodes; executions over the last 30 days,
denser in recent days (density falling linearly with age: 6.6% in the last 24 h, 0.3% in the last hour),
mostly succeeded with some failed, retrying, timed out, lost and dead (each dead one with its dead letter),
a few hundred pending/queued/running (loaded once: the active set does not grow with history), and some
output text.

Prints p50/p99 (ms) per endpoint and size, the p99 1M/10k ratio, and the SQL statements each request made.

Run: .venv/bin/python bench/history_scale.py [--sizes 10000,100000,1000000] [--requests 50]
The indexes these reads need come with the migrations (jobs 0011: execution_created, execution_job_created,
execution_unsuccessful, deadletter_created).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

os.environ.setdefault("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/sched_history_bench")
os.environ["SCHEDULER_METRICS_CACHE_SECONDS"] = "0"  # every request computes its summary
os.environ["DEBUG"] = "false"  # DEBUG keeps every SQL statement in memory: not what a deployment runs

from _setup import machine, setup  # noqa: E402 - the environment above must be set first

JOBS = 1000
OWNERS = 5
NODES = 10
ACTIVE = 300
DAYS = 30
PREFIX = "hist-bench"
WARM = 5  # requests per endpoint before measuring: the first after a load read cold pages
# Terminal outcomes and their weights: mostly succeeded.
OUTCOMES = [
    ("succeeded", 900),
    ("failed", 45),
    ("retrying", 15),
    ("timed_out", 10),
    ("cancelled", 10),
    ("skipped", 8),
    ("lost", 4),
    ("dead", 8),
]
COLUMNS = (
    "job_id", "node_id", "scheduled_for", "attempt", "trigger", "status", "pending_reason", "created_at",
    "queued_at", "started_at", "finished_at", "exit_code", "output", "output_truncated", "error", "end_cause",
)  # fmt: skip


def fixtures() -> tuple[Any, Any, list[int], list[int], int]:
    """Owners, jobs and nodes (once): (operator, plain user, job ids, node ids, one of the user's jobs)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from accounts.services import roles_sync
    from jobs.models import Job
    from nodes.models import Node

    roles_sync()
    users = get_user_model().objects
    operator, _ = users.get_or_create(username=f"{PREFIX}-operator")
    operator.groups.add(Group.objects.get(name="operator"))
    owners = [users.get_or_create(username=f"{PREFIX}-owner-{i}")[0] for i in range(OWNERS)]
    for owner in owners:
        owner.groups.add(Group.objects.get(name="submitter"))
    if not Job.objects.filter(owner__in=owners).exists():
        # Owner 0 (the plain user measured) has a tenth of the jobs; the others share the rest.
        Job.objects.bulk_create(
            Job(owner=owners[0 if n % 10 == 0 else 1 + n % (OWNERS - 1)], name=f"{PREFIX}-{n}", kind="python",
                payload={"handler": "echo"})
            for n in range(JOBS)
        )  # fmt: skip
    for n in range(NODES):
        Node.objects.get_or_create(name=f"{PREFIX}-{n}@host{n}", defaults={"hostname": f"host{n}"})
    job_ids = list(Job.objects.filter(owner__in=owners).order_by("pk").values_list("pk", flat=True))
    node_ids = list(Node.objects.filter(name__startswith=PREFIX).values_list("pk", flat=True))
    user_job = Job.objects.filter(owner=owners[0]).order_by("pk").values_list("pk", flat=True)[0]
    return operator, owners[0], job_ids, node_ids, user_job


def _finished_row(rng: random.Random, serial: int, now: datetime, job: int, node: int) -> tuple[Any, ...]:
    age = timedelta(days=DAYS * (1 - rng.random() ** 0.5), seconds=60)  # density falls linearly with age
    created = now - age
    slot = created.replace(microsecond=serial % 1_000_000) - timedelta(seconds=rng.randint(0, 2))
    started = created + timedelta(milliseconds=rng.randint(5, 900))
    finished = started + timedelta(seconds=rng.expovariate(1 / 20))
    status = rng.choices([o for o, _ in OUTCOMES], [w for _, w in OUTCOMES])[0]
    ok = status == "succeeded"
    output = f"run {serial}: processed {rng.randint(1, 10**6)} items\n" * rng.randint(0, 4)
    error = "" if ok else f"exit status 1: handler raised ValueError({serial})"
    trigger = "retry" if status != "succeeded" and rng.random() < 0.3 else "schedule"
    return (
        job, node, slot, 1, trigger, status, "", created, created, started, finished,
        0 if ok else 1, output, False, error, "exited",
    )  # fmt: skip


def _active_row(rng: random.Random, serial: int, now: datetime, job: int, node: int) -> tuple[Any, ...]:
    status = rng.choice(["pending", "queued", "running"])
    created = now - timedelta(seconds=rng.randint(1, 600))
    slot = created.replace(microsecond=serial % 1_000_000)
    queued = None if status == "pending" else created
    started = created + timedelta(seconds=1) if status == "running" else None
    reason = "waiting for a node with room" if status == "pending" else ""
    return (job, None if status == "pending" else node, slot, 1, "schedule", status, reason, created,
            queued, started, None, None, "", False, "", "")  # fmt: skip


def rows(count: int, first: int, job_ids: list[int], node_ids: list[int]) -> Iterator[tuple[Any, ...]]:
    """`count` executions; the very first load includes the active ones."""
    rng = random.Random(first)
    now = datetime.now(UTC)
    for serial in range(first, first + count):
        job, node = rng.choice(job_ids), rng.choice(node_ids)
        make = _active_row if serial < ACTIVE else _finished_row
        yield make(rng, serial, now, job, node)


def grow(target: int, job_ids: list[int], node_ids: list[int]) -> float:
    """Add executions by COPY until there are `target`, dead letters for the new dead ones; ANALYZE."""
    from django.db import connection

    began = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0), count(*) FROM jobs_execution")
        last_id, have = cursor.fetchone()
        with cursor.cursor.copy(f"COPY jobs_execution ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows(target - have, have, job_ids, node_ids):
                copy.write_row(row)
        cursor.execute(
            "INSERT INTO jobs_deadletter (job_id, execution_id, error, status, replay_count, created_at)"
            " SELECT job_id, id, error, 'open', 0, finished_at FROM jobs_execution"
            " WHERE status = 'dead' AND id > %s",
            [last_id],
        )
        cursor.execute("ANALYZE jobs_execution")
        cursor.execute("ANALYZE jobs_deadletter")
        cursor.execute("ANALYZE jobs_job")
    return time.perf_counter() - began


def endpoints(user_job: int, node: int) -> list[tuple[str, str, str]]:
    """(label, who, path): who is "op" (operator) or "user" (the plain submitter)."""
    since = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    until = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    api = "/api/v1"
    return [
        ("executions/", "op", f"{api}/executions/"),
        ("executions/ (user)", "user", f"{api}/executions/"),
        ("?job=", "op", f"{api}/executions/?job={user_job}"),
        ("?job= (user)", "user", f"{api}/executions/?job={user_job}"),
        ("?status=failed", "op", f"{api}/executions/?status=failed"),
        ("?status=dead (user)", "user", f"{api}/executions/?status=dead"),
        ("  the same, ?limit=5", "user", f"{api}/executions/?status=dead&limit=5"),
        ("?status=failed&job=", "op", f"{api}/executions/?status=failed&job={user_job}"),
        ("?since=&until=", "op", f"{api}/executions/?since={since}&until={until}"),
        ("?node=", "op", f"{api}/executions/?node={node}"),
        ("?offset=1000", "op", f"{api}/executions/?offset=1000"),
        ("dead-letters/", "op", f"{api}/dead-letters/"),
        ("dead-letters/ (user)", "user", f"{api}/dead-letters/"),
        ("dashboard/", "op", "/dashboard/"),
        ("dashboard/ (user)", "user", "/dashboard/"),
        ("dashboard/fragment/", "op", "/dashboard/fragment/"),
        ("metrics", "op", "/metrics"),
        ("api/v1/metrics/", "op", f"{api}/metrics/"),
    ]


def measure(clients: dict[str, Any], path: str, who: str, requests: int) -> tuple[float, float, int, str]:
    """(p50 ms, p99 ms, SQL statements of one request, rows on the page) over `requests` GETs after WARM
    ones (cache warm). Rows: a list's page length ("-" for pages that are no list): a filter that matches
    fewer rows than a page at a small size does less work there, whatever the table's size."""
    from django.db import connection

    client = clients[who]
    for _ in range(WARM):
        client.get(path)
    statements: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append(sql)  # a wrapper, not CaptureQueriesContext: request_started resets queries_log
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        response = client.get(path)
    if response.status_code != 200:
        raise SystemExit(f"GET {path} as {who}: {response.status_code} {response.content[:300]!r}")
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        client.get(path)
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    rows = "-"
    if response.get("Content-Type", "").startswith("application/json") and "results" in response.json():
        rows = str(len(response.json()["results"]))
    return statistics.median(times), p99, len(statements), rows


def table(sizes: list[int], results: dict[int, dict[str, tuple[float, float, int, str]]]) -> None:
    labels = list(results[sizes[0]])
    head = " | ".join(f"{size:>13,}" for size in sizes)
    print(f"{'endpoint':<22} | {head} | p99 {sizes[-1]:,}/{sizes[0]:,} | SQL | rows")
    for label in labels:
        cells = " | ".join(f"{results[s][label][0]:>6.1f}/{results[s][label][1]:<6.1f}" for s in sizes)
        ratio = results[sizes[-1]][label][1] / results[sizes[0]][label][1]
        statements = "/".join(str(results[s][label][2]) for s in sizes)
        rows = "/".join(results[s][label][3] for s in sizes)
        print(f"{label:<22} | {cells} | {ratio:>5.2f}x | {statements} | {rows}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated, increasing")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes):
        raise SystemExit("--sizes must increase: the table grows")
    setup()
    from django.db import connection
    from django.test import Client

    from jobs.models import Execution

    if Execution.objects.exists() and Execution.objects.order_by().count() > sizes[0]:
        raise SystemExit(f"the bench database has more than {sizes[0]:,} executions: drop it to start over")
    operator, user, job_ids, node_ids, user_job = fixtures()
    clients = {"op": Client(), "user": Client()}
    clients["op"].force_login(operator)
    clients["user"].force_login(user)
    results: dict[int, dict[str, tuple[float, float, int, str]]] = {}
    for size in sizes:
        loaded = grow(size, job_ids, node_ids)
        print(f"{size:,} executions (loaded in {loaded:.1f} s); load average {os.getloadavg()[0]:.2f}")
        results[size] = {
            label: measure(clients, path, who, args.requests)
            for label, who, path in endpoints(user_job, node_ids[0])
        }
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(relid)))"
            " FROM pg_partition_tree('jobs_execution')"
        )
        (table_size,) = cursor.fetchone()
    print(f"machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; jobs_execution {table_size}")
    print(f"p50/p99 ms over {args.requests} requests each; SQL = statements per request at each size")
    table(sizes, results)


if __name__ == "__main__":
    main()
