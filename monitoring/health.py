"""Dependency checks shared by the health endpoints and `manage.py` commands."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from django.conf import settings
from django.db import DatabaseError, connection
from kombu import Connection
from kombu.exceptions import OperationalError as KombuOperationalError


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_broker() -> None:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


CHECKS: dict[str, Callable[[], None]] = {"database": check_database, "broker": check_broker}
_EXPECTED = (DatabaseError, KombuOperationalError, OSError, TimeoutError)


def run_checks(names: Iterable[str]) -> dict[str, dict[str, object]]:
    """Run the named checks and return each one's state, error and latency."""
    results: dict[str, dict[str, object]] = {}
    for name in names:
        start = time.monotonic()
        try:
            CHECKS[name]()
        except _EXPECTED as exc:
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        else:
            results[name] = {"ok": True}
        results[name]["ms"] = round((time.monotonic() - start) * 1000, 1)
    return results
