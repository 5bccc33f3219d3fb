"""The history's partitions as an operator sees them: months, rows (the planner's estimate) and size."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection

from scheduler_project.partitions import Month, default_name, partitions

TABLES = ("jobs_execution", "monitoring_executionlogchunk")


@dataclass(frozen=True)
class Partition:
    table: str
    name: str
    month: Month | None  # None: the default partition
    rows: int  # pg_class.reltuples after ANALYZE / autovacuum; -1 never analysed
    bytes: int


def history_partitions_list() -> list[Partition]:
    """Every partition of both history tables, months in order, the default partition last."""
    found: list[Partition] = []
    with connection.cursor() as cursor:
        for table in TABLES:
            names: list[tuple[Month | None, str]] = sorted(partitions(cursor, table).items())
            names.append((None, default_name(table)))
            for month, name in names:
                cursor.execute(
                    "SELECT reltuples::bigint, pg_total_relation_size(oid) FROM pg_class WHERE relname = %s",
                    [name],
                )
                row = cursor.fetchone()
                if row is not None:
                    found.append(Partition(table, name, month, int(row[0]), int(row[1])))
    return found
