"""Partitioned history: the migration's copy, and retention by dropping a month against deleting rows.

On a database of its own (dropped and created again each run), at the schema before partitioning
(jobs 0009): N executions over three months (the oldest past the retention), each with its allocation,
one in ten with an output chunk, one in a thousand dead-lettered. Then:

1. `migrate` to partitioned tables (jobs 0010 + monitoring 0002): how long the copy takes;
2. retention: the oldest month dropped (`monitoring.services.history`): the time the tables are locked
   (detach and move back what stays) and the clean-up after it;
3. side by side, row-by-row retention of the same kind of rows (as before partitioning, and as the default
   partition still is): R executions in the default partition pruned in batches of 1,000.

    .venv/bin/python bench/history_partitions.py [--rows 1000000] [--row-prune 50000]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta
from urllib.parse import urlsplit

os.environ.setdefault("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/sched_partition_bench")

import _setup  # noqa: E402  (sets the environment before Django loads)

BEFORE = [
    ("jobs", "0009_container_jobs"),
    ("monitoring", "0001_initial"),
    ("nodes", "0003_worker_incarnation"),
]


def _recreate_database() -> None:
    import psycopg

    parts = urlsplit(_setup.BENCH_DATABASE_URL)
    name = parts.path.lstrip("/")
    with psycopg.connect(
        host=parts.hostname, port=parts.port or 5432, user=parts.username, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _migrate(targets=None) -> float:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    started = time.perf_counter()
    executor.migrate(targets or executor.loader.graph.leaf_nodes())
    return time.perf_counter() - started


def _load(rows: int, oldest_days: int) -> None:
    """rows executions, slots evenly over the last `oldest_days` days; allocations, chunks, dead letters."""
    from django.db import connection

    with connection.cursor() as c:
        c.execute(
            "INSERT INTO accounts_user (password, is_superuser, username, first_name, last_name, email, "
            "is_staff, is_active, date_joined) VALUES ('', false, 'bench', '', '', '', false, true, now()) "
            "RETURNING id"
        )
        owner = c.fetchone()[0]
        c.execute(
            "INSERT INTO jobs_job (owner_id, name, description, kind, payload, priority, cpu, memory_mb, "
            "node_selector, timeout_seconds, max_retries, retry_backoff_seconds, retry_backoff_max_seconds, "
            "retry_jitter, concurrency_policy, misfire_policy, status, idempotency_key, created_at, "
            "updated_at) SELECT %s, 'job ' || g, '', 'shell', '{}', 5, 0.1, 64, '{}', 60, 0, 10, 3600, true, "
            "'allow', 'run_once', 'active', '', now(), now() FROM generate_series(1, 1000) g",
            [owner],
        )
        c.execute(
            "INSERT INTO nodes_node (name, hostname, status, cpu_capacity, memory_mb_capacity, cpu_percent, "
            "memory_used_mb, running_count, labels, version, registered_at, cpu_allocated, "
            "memory_mb_allocated) VALUES ('bench@host', 'host', 'online', 64, 65536, 0, 0, 0, '{}', '', "
            "now(), 0, 0) RETURNING id"
        )
        node = c.fetchone()[0]
        c.execute("SELECT min(id) FROM jobs_job")
        first_job = c.fetchone()[0]
        c.execute(
            "INSERT INTO jobs_execution (job_id, scheduled_for, attempt, trigger, status, pending_reason, "
            "created_at, started_at, finished_at, output, output_truncated, error, end_cause, node_id) "
            "SELECT %(job)s + g %% 1000, s, 1, 'schedule', CASE WHEN g %% 1000 = 0 THEN 'dead' ELSE "
            "'succeeded' END, '', s, s, s + interval '2 seconds', 'ok', false, '', 'exited', %(node)s "
            "FROM generate_series(1, %(rows)s) g, "
            "LATERAL (SELECT now() - (%(days)s * interval '1 day') * (1 - g::float / %(rows)s) AS s) t",
            {"job": first_job, "node": node, "rows": rows, "days": oldest_days},
        )
        c.execute(
            "INSERT INTO nodes_resourceallocation (node_id, execution_id, cpu, memory_mb, allocated_at, "
            "released_at) SELECT node_id, id, 0.1, 64, scheduled_for, finished_at FROM jobs_execution"
        )
        c.execute(
            'INSERT INTO monitoring_executionlogchunk (execution_id, seq, "offset", text, created_at) '
            "SELECT id, 0, 0, repeat('output line ', 20), finished_at FROM jobs_execution WHERE id % 10 = 0"
        )
        c.execute(
            "INSERT INTO jobs_deadletter (job_id, execution_id, error, status, replay_count, created_at) "
            "SELECT job_id, id, 'boom', 'open', 0, now() FROM jobs_execution WHERE status = 'dead'"
        )
        c.execute("ANALYZE")


def _default_rows(rows: int) -> None:
    """rows finished executions whose slots no month covers (long ago): the default partition."""
    from django.db import connection

    with connection.cursor() as c:
        c.execute(
            "INSERT INTO jobs_execution (job_id, scheduled_for, attempt, trigger, status, pending_reason, "
            "created_at, started_at, finished_at, output, output_truncated, error, end_cause, node_id) "
            "SELECT (SELECT min(id) FROM jobs_job) + g %% 1000, now() - interval '400 days' + g * interval "
            "'1 second', 1, 'schedule', 'succeeded', '', now(), now(), now() - interval '300 days', 'ok', "
            "false, '', 'exited', (SELECT min(id) FROM nodes_node) FROM generate_series(1, %s) g",
            [rows],
        )
        c.execute(
            "INSERT INTO nodes_resourceallocation (node_id, execution_id, cpu, memory_mb, allocated_at, "
            "released_at) SELECT node_id, id, 0.1, 64, finished_at, finished_at FROM jobs_execution_default "
            "WHERE scheduled_for < now() - interval '300 days'"
        )
        c.execute(
            'INSERT INTO monitoring_executionlogchunk (execution_id, scheduled_for, seq, "offset", text, '
            "created_at) SELECT id, scheduled_for, 0, 0, repeat('output line ', 20), finished_at "
            "FROM jobs_execution_default WHERE id % 10 = 0 AND scheduled_for < now() - interval '300 days'"
        )
        c.execute("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--row-prune", type=int, default=50_000)
    args = parser.parse_args()
    _recreate_database()
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    from monitoring.services import history

    _migrate(BEFORE)
    started = time.perf_counter()
    _load(args.rows, oldest_days=80)
    load_s = time.perf_counter() - started
    migrate_s = _migrate()
    with connection.cursor() as c:
        c.execute("SELECT tableoid::regclass::text, count(*) FROM jobs_execution GROUP BY 1 ORDER BY 1")
        layout = c.fetchall()
    settings.SCHEDULER_RETENTION_DAYS = 30
    from django.utils import timezone

    cutoff = timezone.now() - timedelta(days=30)
    months = sorted(m for m in history._detached_months() + list(_months()) if m.end <= cutoff)
    month = months[0]
    with connection.cursor() as c:
        c.execute(f"SELECT count(*) FROM jobs_execution_{month.suffix()}")  # noqa: S608 - a month's name
        month_rows = c.fetchone()[0]
    started = time.perf_counter()
    kept = history._month_detach(month)
    locked_s = time.perf_counter() - started
    started = time.perf_counter()
    dropped = history._detached_drop(month)
    cleanup_s = time.perf_counter() - started

    _default_rows(args.row_prune)
    started = time.perf_counter()
    row_pruned = history._default_prune(timezone.now() - timedelta(days=30))
    row_s = time.perf_counter() - started

    print(f"machine: {_setup.machine()}")
    print(f"loaded {args.rows:,} executions (pre-partition schema) in {load_s:.1f} s; layout after migrate:")
    for name, count in layout:
        print(f"  {name:<32} {count:>10,}")
    steps = [
        ("migrate: copy into partitions (executions, chunks)", f"{args.rows:,}", migrate_s, args.rows),
        (
            f"retention, {month.suffix()}: detach + move back (tables locked)",
            f"{month_rows:,} ({kept} kept)",
            locked_s,
            month_rows,
        ),
        (
            f"retention, {month.suffix()}: clean-up and drop (no table lock)",
            f"{dropped:,}",
            cleanup_s,
            dropped,
        ),
        ("retention, row by row (default partition, batches of 1,000)", f"{row_pruned:,}", row_s, row_pruned),
    ]
    print()
    print("| step | rows | seconds | ms per 1,000 rows |")
    print("|---|---:|---:|---:|")
    for label, rows, seconds, count in steps:
        print(f"| {label} | {rows} | {seconds:.3f} | {seconds / count * 1e6:.2f} |")
    per_row_drop = (locked_s + cleanup_s) / dropped
    print(f"\nrow by row / month drop, per execution: {row_s / row_pruned / per_row_drop:.1f}x")


def _months():
    from django.db import connection

    from scheduler_project.partitions import partitions

    with connection.cursor() as c:
        return partitions(c, "jobs_execution")


if __name__ == "__main__":
    main()
