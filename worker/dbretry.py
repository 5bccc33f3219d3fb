"""Database steps of a worker that must outlast a database blip: drop the dead connection, back off, retry."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections

logger = logging.getLogger(__name__)
DB_UNAVAILABLE = (OperationalError, InterfaceError)  # the connection or the server is gone, not the query
RETRY_DELAY_MAX = 5.0
T = TypeVar("T")


def connections_reset() -> None:
    """Drop every database connection of this process: the next query opens a fresh one."""
    for conn in connections.all(initialized_only=True):
        with contextlib.suppress(Exception):  # closing a connection the server already dropped
            conn.close()


def db_retry(what: str, step: Callable[[], T], *, seconds: float | None = None) -> T:
    """Run `step` until the database answers it: each connection-level error drops the connection and
    waits (0.1 s, doubling, at most 5 s) before trying again, for up to `seconds`; then it raises."""
    limit = settings.SCHEDULER_WORKER_DB_RETRY_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + limit
    delay = 0.1
    while True:
        try:
            return step()
        except DB_UNAVAILABLE as exc:
            connections_reset()
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("%s: database unavailable (%s); retrying in %.1fs", what, str(exc).strip(), delay)
            time.sleep(delay)
            delay = min(delay * 2, RETRY_DELAY_MAX)


def best_effort(what: str, step: Callable[[], T]) -> T | None:
    """Run `step` once; a database that cannot answer is logged (the caller tries again later), not raised."""
    try:
        return step()
    except DB_UNAVAILABLE as exc:
        connections_reset()
        logger.warning("%s failed, the run goes on: %s", what, str(exc).strip())
        return None
