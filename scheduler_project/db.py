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


def sql_execute(sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the default connection; its rows (empty when it returns none)."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    started = time.monotonic()
    with connection.wrap_database_errors:
        raw: Any = connection.connection
        with psycopg.Cursor(raw) as cursor:
            cursor.execute(sql, params, prepare=bool(settings.SCHEDULER_DB_PREPARE))
            rows = cursor.fetchall() if cursor.description is not None else []
    if connection.queries_logged:  # DEBUG, or a test counting round trips (CaptureQueriesContext)
        connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})
    return rows
