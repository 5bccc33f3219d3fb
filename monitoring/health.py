"""Dependency checks shared by the health endpoints and `manage.py` commands."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import timedelta

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone
from kombu import Connection
from kombu.exceptions import OperationalError as KombuOperationalError

from jobs.beat.lease import leader_status
from nodes.models import Node


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_broker() -> None:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


class CheckFailed(Exception):
    """A dependency answered, but not as a ready system should."""


CHECKS: dict[str, Callable[[], None]] = {"database": check_database, "broker": check_broker}
_EXPECTED = (DatabaseError, KombuOperationalError, OSError, TimeoutError, CheckFailed, redis.RedisError)


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


def check_workers() -> None:
    """At least one node is online and heartbeated within the offline threshold."""
    fresh = timezone.now() - timedelta(seconds=float(settings.SCHEDULER_NODE_OFFLINE_AFTER_SECONDS))
    if not Node.objects.filter(status=Node.Status.ONLINE, last_heartbeat_at__gte=fresh).exists():
        raise CheckFailed("no online worker node has heartbeated recently")


def check_beat() -> None:
    """A beat leader renewed its lease recently."""
    status = leader_status()
    if not status.get("healthy"):
        age = status.get("age_seconds")
        seen = f"last seen {age:.0f}s ago" if age is not None else "never seen"
        raise CheckFailed(f"no beat leader holds the lease ({seen})")


CHECKS.update({"workers": check_workers, "beat": check_beat})
