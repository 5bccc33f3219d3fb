"""Hand-written SQL of the hot paths (claim, finish, placement), run as prepared statements.

The ORM plans every statement again; the few statements that run once or twice per job (a transition of an
execution, a reservation, a release) are large CTEs whose planning cost PostgreSQL more CPU than running
them (about 0.5 ms and 1.1 ms on our machine, against 0.2-0.3 ms of execution). `sql_execute` runs them on
Django's own connection (so inside Django's transactions, with Django's error classes and health check)
with server-side binding and `prepare=True`: psycopg prepares each statement once per connection and later
executions skip parsing and, after a few runs, planning. SCHEDULER_DB_PREPARE=0 turns preparing off (e.g.
behind a PgBouncer in transaction mode older than 1.21, which cannot keep prepared statements).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection

Params = Sequence[Any] | Mapping[str, Any]
_NO_FLUSH = "SELECT set_config('synchronous_commit', 'off', true)"


def sql_execute(sql: str, params: Params = (), *, flush_wal: bool = True) -> list[tuple[Any, ...]]:
    """Run one statement on the default connection; its rows (empty when it returns none).

    `flush_wal=False`, outside a transaction: the statement's own commit does not wait for the WAL to
    reach the disk (synchronous_commit off for it alone; the next synchronous commit on the server flushes
    it). For writes that may be lost in a database crash at no cost but doing the work again.
    """
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    prepare = bool(settings.SCHEDULER_DB_PREPARE)
    started = time.monotonic()
    with connection.wrap_database_errors:
        raw: Any = connection.connection
        with psycopg.Cursor(raw) as cursor:
            if flush_wal or connection.in_atomic_block or not settings.SCHEDULER_DB_ASYNC_CLAIM:
                cursor.execute(sql, params, prepare=prepare)
            else:
                # One round trip, one implicit transaction: the setting holds for this statement only.
                with raw.pipeline():
                    cursor.execute(_NO_FLUSH, prepare=prepare)
                    cursor.execute(sql, params, prepare=prepare)
            rows = cursor.fetchall() if cursor.description is not None else []
    if connection.queries_logged:  # DEBUG, or a test counting round trips (CaptureQueriesContext)
        connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})
    return rows
