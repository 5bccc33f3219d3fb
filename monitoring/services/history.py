"""History in monthly partitions: months created ahead, and retention that drops whole months.

Executions and their output chunks are partitioned alike by the execution's `scheduled_for`
(scheduler_project/partitions.py). Retention drops a month once all of it is older than
SCHEDULER_RETENTION_DAYS, in two steps so the live tables are locked for milliseconds, not for the
clean-up:

1. one short transaction detaches the month of executions and of chunks and moves back what must stay
   (dead letters' executions, runs still active or with a retry waiting, and their chunks): with the
   month detached they land in the default partition;
2. then, outside that lock, the rows that pointed at the dropped executions are cleared (retry decisions,
   allocations, retry_of / replay_of links) and the detached tables are dropped. A crash in between
   leaves a detached table that the next pass finishes.

Rows of the default partition (kept ones, slots outside every month) are few: they are pruned row by row
as before (finished before the cutoff, no dead letter).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from jobs.models import Execution
from scheduler_project.partitions import Month, default_name, partition_create, partition_detach, partitions

logger = logging.getLogger(__name__)
EXECUTIONS = "jobs_execution"
CHUNKS = "monitoring_executionlogchunk"
KEY = "scheduled_for"
LOCK_TIMEOUT = "5s"  # a detach waits at most this long for the lock; the next pass tries again


@dataclass(frozen=True)
class Pruned:
    months_dropped: list[str]
    executions_dropped: int
    executions_kept: int
    rows_deleted: int  # from the default partition, row by row

    @property
    def executions(self) -> int:
        return self.executions_dropped + self.rows_deleted


def history_partitions_ensure(*, now: datetime | None = None, ahead: int | None = None) -> list[str]:
    """Create this month's and the next `ahead` months' partitions of both tables; the names created."""
    months = int(settings.SCHEDULER_HISTORY_MONTHS_AHEAD) if ahead is None else ahead
    current = Month.of(now or timezone.now())
    created: list[str] = []
    for month in (current.shift(n) for n in range(months + 1)):
        created += history_month_create(month)
    if created:
        logger.info("history: partitions created: %s", ", ".join(created))
    return created


def history_month_create(month: Month) -> list[str]:
    """Create one month's partitions (executions, chunks), taking its rows out of the default partitions."""
    created = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        for table in (EXECUTIONS, CHUNKS):
            if partition_create(cursor, table, KEY, month):
                created.append(f"{table}_{month.suffix()}")
    return created


def history_prune(*, older_than_days: int | None = None, now: datetime | None = None) -> Pruned:
    """Retention: drop the months older than the cutoff, then prune the default partition's old rows."""
    days = settings.SCHEDULER_RETENTION_DAYS if older_than_days is None else older_than_days
    if days <= 0:
        return Pruned([], 0, 0, 0)  # retention off
    cutoff = (now or timezone.now()) - timedelta(days=days)
    dropped: list[str] = []
    executions_dropped = kept = 0
    with connection.cursor() as cursor:
        months = sorted(m for m in partitions(cursor, EXECUTIONS) if m.end <= cutoff)
    for month in months:
        moved = _month_detach(month)
        kept += moved
        dropped.append(month.suffix())
    for month in _detached_months():
        executions_dropped += _detached_drop(month)
    rows = _default_prune(cutoff)
    return Pruned(dropped, executions_dropped, kept, rows)


_KEEP = """
    status IN ('pending', 'queued', 'running')
    OR id IN (SELECT execution_id FROM jobs_deadletter)
    OR id IN (SELECT failed_execution_id FROM jobs_jobretry WHERE status = 'waiting')
"""


def _month_detach(month: Month) -> int:
    """Step 1: detach the month of both tables, move the rows that stay into the default partitions."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        executions = partition_detach(cursor, EXECUTIONS, month)
        chunks = partition_detach(cursor, CHUNKS, month) if month in partitions(cursor, CHUNKS) else None
        cursor.execute(
            f'WITH kept AS (DELETE FROM "{executions}" WHERE {_KEEP} RETURNING *) '
            f"INSERT INTO {EXECUTIONS} SELECT * FROM kept RETURNING id"
        )
        kept = [row[0] for row in cursor.fetchall()]
        if chunks and kept:
            cursor.execute(
                f'WITH kept AS (DELETE FROM "{chunks}" WHERE execution_id = ANY(%s) RETURNING *) '
                f"INSERT INTO {CHUNKS} SELECT * FROM kept",
                [kept],
            )
    logger.info("history: %s detached, %d executions kept", month.suffix(), len(kept))
    return len(kept)


def _detached_months() -> list[Month]:
    """Months detached by step 1 and not dropped yet (this pass's, or a crashed pass's)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition AND relname ~ %s",
            [rf"^{EXECUTIONS}_p\d{{4}}_\d{{2}}$"],
        )
        names = [row[0] for row in cursor.fetchall()]
    months = []
    for name in names:
        year, number = name.removeprefix(f"{EXECUTIONS}_p").split("_")
        months.append(Month(int(year), int(number)))
    return sorted(months)


def _detached_drop(month: Month) -> int:
    """Step 2: clear what pointed at the detached executions, then drop the detached tables."""
    executions = f"{EXECUTIONS}_{month.suffix()}"
    chunks = f"{CHUNKS}_{month.suffix()}"
    gone = f'SELECT id FROM "{executions}"'
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{executions}"')
        count = cursor.fetchone()[0]
        cursor.execute(f"DELETE FROM jobs_jobretry WHERE failed_execution_id IN ({gone})")
        cursor.execute(f"UPDATE jobs_jobretry SET new_execution_id = NULL WHERE new_execution_id IN ({gone})")
        cursor.execute(f"DELETE FROM nodes_resourceallocation WHERE execution_id IN ({gone})")
        for column in ("retry_of_id", "replay_of_id"):
            cursor.execute(f"UPDATE {EXECUTIONS} SET {column} = NULL WHERE {column} IN ({gone})")
        # Deferred foreign key checks queued on the detached rows (same transaction) must run before the drop.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f'DROP TABLE IF EXISTS "{chunks}"')
        cursor.execute(f'DROP TABLE "{executions}"')
    logger.info("history: %s dropped (%d executions)", month.suffix(), count)
    return count


def executions_prune(*, older_than_days: int | None = None, now: datetime | None = None) -> int:
    """Retention (the daily `monitoring.prune_retention`): how many executions went."""
    return history_prune(older_than_days=older_than_days, now=now).executions


def _default_prune(cutoff: datetime, batch: int = 1000) -> int:
    """Row by row, in the default partition only: finished before the cutoff, no dead letter."""
    default = default_name(EXECUTIONS)
    deleted = 0
    while True:
        with connection.cursor() as cursor:
            cursor.execute(
                f'SELECT id FROM "{default}" WHERE status = ANY(%s) AND finished_at < %s '
                "AND id NOT IN (SELECT execution_id FROM jobs_deadletter) ORDER BY finished_at LIMIT %s",
                [sorted(Execution.TERMINAL), cutoff, batch],
            )
            ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return deleted
        with transaction.atomic():
            # Active allocations never belong to finished executions; chunks and retries cascade.
            deleted += Execution.objects.filter(pk__in=ids).delete()[1].get("jobs.Execution", 0)
