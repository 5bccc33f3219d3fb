"""Reads of the read-only views from a streaming replica; everything else on the primary.

With DATABASE_REPLICA_URL set, settings.py adds the "replica" database and this router. A read goes to the
replica only inside a view marked `@replica_reads` (API lists and retrieves, logs, the dashboard, metrics),
outside any transaction, and while the replica is healthy: it answers and its replay lag is under
SCHEDULER_REPLICA_MAX_LAG_SECONDS. Health is checked at most every SCHEDULER_REPLICA_CHECK_SECONDS per
process; each change (ok, down, lagging) is logged once. Everything that decides (claims, placement, beat,
retries, the worker, every write) runs outside those views, so on the primary. A replica that fails in the
middle of a marked view is marked down and the view runs once more on the primary (a GET: safe to repeat).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from scheduler_project.errors import DATABASE_UNAVAILABLE

logger = logging.getLogger(__name__)

REPLICA = "replica"
F = TypeVar("F", bound=Callable[..., Any])

# Lag in seconds. Caught up (everything received is replayed, and WAL is still streaming in) is 0, even
# when the last replayed commit is old: an idle primary sends nothing to replay. Otherwise the age of the
# last replayed commit; no replay yet or no timestamp is infinitely behind. Not in recovery: a promoted
# standby (or the primary itself) is never behind.
LAG_SQL = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
         AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver) THEN 0
    ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8, 'Infinity'::float8)
END
"""


@dataclass
class _Reads:
    """One marked view's routing: whether it read from the replica, whether it fell back."""

    used: bool = False
    fallen_back: bool = False


_reads: ContextVar[_Reads | None] = ContextVar("scheduler_replica_reads", default=None)


class _Health:
    """This process's view of the replica: its state, when it was last checked, what was logged."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = "unknown"  # ok, down, lagging
        self.checked_at = float("-inf")

    def record(self, state: str, detail: str) -> None:
        self.checked_at = time.monotonic()
        if state == self.state:
            return
        self.state = state
        if state == "ok":
            logger.info("read replica in use (%s)", detail)
        else:
            logger.warning("read replica %s (%s): read-only views read from the primary", state, detail)


_health = _Health()


def _replica_close() -> None:
    with contextlib.suppress(DatabaseError):  # closing a connection to a server that is gone can fail
        connections[REPLICA].close()


def _replica_check() -> None:
    """Ask the replica for its lag, on this thread's replica connection; record the outcome."""
    try:
        with connections[REPLICA].cursor() as cursor:
            cursor.execute(LAG_SQL)
            row = cursor.fetchone()
    except DatabaseError as exc:
        _replica_close()
        _health.record("down", _first_line(exc))
        return
    lag = float(row[0]) if row else float("inf")
    limit = float(settings.SCHEDULER_REPLICA_MAX_LAG_SECONDS)
    if lag > limit:
        _health.record("lagging", f"lag {lag:.1f}s over SCHEDULER_REPLICA_MAX_LAG_SECONDS={limit:g}")
    else:
        _health.record("ok", f"lag {lag:.1f}s")


def replica_healthy() -> bool:
    """Whether the replica answered with a lag under the limit at the last check (checked when due)."""
    due = time.monotonic() - _health.checked_at >= float(settings.SCHEDULER_REPLICA_CHECK_SECONDS)
    # One thread checks; the others go on with the last answer meanwhile.
    if due and _health.lock.acquire(blocking=False):
        try:
            _replica_check()
        finally:
            _health.lock.release()
    return _health.state == "ok"


def replica_failed(exc: BaseException) -> None:
    """A read on the replica failed: down until the next check says otherwise."""
    _replica_close()
    _health.record("down", f"{type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def replica_reads(view: F) -> F:
    """Mark a read-only view (function or method): its reads may go to the replica."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if REPLICA not in settings.DATABASES:
            return view(*args, **kwargs)
        reads = _Reads()
        token = _reads.set(reads)
        try:
            return view(*args, **kwargs)
        except DATABASE_UNAVAILABLE as exc:
            if not (reads.used and connections[REPLICA].errors_occurred):
                raise  # the primary's error: scheduler_project.dbguard answers it
            replica_failed(exc)
            reads.fallen_back = True
            return view(*args, **kwargs)
        finally:
            _reads.reset(token)

    return cast("F", wrapper)


class ReplicaRouter:
    """Django database router: "replica" for reads of marked views when healthy; "default" otherwise."""

    def db_for_read(self, model: type, **hints: Any) -> str:
        reads = _reads.get()
        if reads is None or reads.fallen_back or connections[DEFAULT_DB_ALIAS].in_atomic_block:
            return DEFAULT_DB_ALIAS
        if not replica_healthy():
            return DEFAULT_DB_ALIAS
        reads.used = True
        return REPLICA

    def db_for_write(self, model: type, **hints: Any) -> str:
        # Never the database an instance was read from: a row read on the replica is saved on the primary.
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        if {obj1._state.db, obj2._state.db} <= {DEFAULT_DB_ALIAS, REPLICA}:
            return True  # the same rows, on two servers
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return False if db == REPLICA else None  # a standby follows its primary's schema


class ReplicaReadsMixin:
    """First base of a DRF viewset: its list and retrieve are `@replica_reads`."""

    @replica_reads
    def list(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return super().list(request, *args, **kwargs)  # type: ignore[misc]

    @replica_reads
    def retrieve(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return super().retrieve(request, *args, **kwargs)  # type: ignore[misc]
