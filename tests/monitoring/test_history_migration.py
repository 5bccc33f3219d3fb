"""The migration to partitioned history keeps every row, id and link, and runs back and forth (issue 13)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from jobs.models import DeadLetter, Execution
from monitoring.models import ExecutionLogChunk
from monitoring.selectors import log_read
from monitoring.services import log_append
from tests.factories import JobFactory

pytestmark = pytest.mark.django_db(transaction=True)
BEFORE = [
    ("jobs", "0009_container_jobs"),
    ("monitoring", "0001_initial"),
    ("nodes", "0003_worker_incarnation"),
]


def _migrate(targets=None) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(targets or executor.loader.graph.leaf_nodes())


def _sql(sql: str, params=()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def _relkind(table: str) -> str:
    return _sql("SELECT relkind FROM pg_class WHERE relname = %s", [table])[0][0]


def test_existing_executions_and_output_move_into_month_partitions():
    job = JobFactory.create()
    _migrate(BEFORE)
    assert _relkind("jobs_execution") == "r"
    now = timezone.now()
    slots = [now - timedelta(days=70), now - timedelta(days=1), now]  # three months at most
    ids = []
    for n, slot in enumerate(slots):
        ids += _sql(
            "INSERT INTO jobs_execution (job_id, scheduled_for, attempt, trigger, status, pending_reason, "
            "created_at, output, output_truncated, error, end_cause) "
            "VALUES (%s, %s, 1, 'schedule', %s, '', %s, '', false, '', '') RETURNING id",
            [job.pk, slot, "dead" if n == 0 else "succeeded", slot],
        )[0]
    _sql(
        'INSERT INTO monitoring_executionlogchunk (execution_id, seq, "offset", text, created_at) '
        "VALUES (%s, 0, 0, 'kept output', now())",
        [ids[0]],
    )
    _sql(
        "INSERT INTO jobs_deadletter (job_id, execution_id, error, status, replay_count, created_at) "
        "VALUES (%s, %s, 'boom', 'open', 0, now())",
        [job.pk, ids[0]],
    )
    _sql("UPDATE jobs_execution SET retry_of_id = %s WHERE id = %s", [ids[0], ids[1]])

    _migrate()

    assert _relkind("jobs_execution") == "p"
    assert _relkind("monitoring_executionlogchunk") == "p"
    assert sorted(Execution.objects.values_list("pk", flat=True)) == sorted(ids)
    old = Execution.objects.get(pk=ids[0])
    months = {r[0] for r in _sql("SELECT tableoid::regclass::text FROM jobs_execution")}
    assert "jobs_execution_default" not in months  # each month with rows got its partition
    assert Execution.objects.get(pk=ids[1]).retry_of_id == old.pk
    assert DeadLetter.objects.get(execution_id=old.pk).error == "boom"
    chunk = ExecutionLogChunk.objects.get(execution_id=old.pk)
    assert chunk.scheduled_for == old.scheduled_for  # the partition key, copied from its execution
    assert log_read(execution_id=old.pk).text == "kept output"
    new = Execution.objects.create(job=job, scheduled_for=now + timedelta(seconds=1), attempt=1)
    assert new.pk > max(ids)  # the id keeps counting
    log_append(execution_id=new.pk, text="after\n")

    _migrate(BEFORE)  # and back: plain tables, rows, ids and the foreign keys into executions again
    assert _relkind("jobs_execution") == "r"
    assert sorted(r[0] for r in _sql("SELECT id FROM jobs_execution")) == sorted([*ids, new.pk])
    fks = _sql("SELECT count(*) FROM pg_constraint WHERE confrelid = 'jobs_execution'::regclass")[0][0]
    assert fks == 7
    _migrate()
    assert _relkind("jobs_execution") == "p"
