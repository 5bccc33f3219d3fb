"""What the jobs core puts on the broker: `jobs.execute` to a node's queue, dead-letter notices, and the
nudge for a placement pass. Only work that is due now; every publish happens after its transaction commits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import transaction

logger = logging.getLogger(__name__)

EXECUTE_TASK = "jobs.execute"
# Room for the worker to record a result after the executor killed a run at the job's timeout.
HARD_LIMIT_MARGIN_SECONDS = 120
# Set while executions wait as pending for capacity; a release only nudges a placement pass when it is set.
PENDING_WAITING_KEY = "jobs:pending-waiting"
# Set while a placement pass is queued and has not started yet; a lost message cannot wedge it for long.
DISPATCH_QUEUED_KEY = "jobs:dispatch-pending-queued"
DISPATCH_QUEUED_TTL = 30


def broker_priority(job_priority: int) -> int:
    """Our priority 0-9 (9 highest) as the broker's: kombu's Redis transport consumes 0 first (inverted);
    RabbitMQ consumes the highest first (as ours)."""
    value = max(0, min(9, int(job_priority)))
    return value if settings.BROKER_IS_AMQP else 9 - value


@dataclass(frozen=True)
class ExecuteMessage:
    """One `jobs.execute` to publish: which execution, to which node queue, how urgent, how long at most."""

    execution_id: int
    queue: str
    priority: int
    timeout_seconds: int


def execute_publish_now(messages: Sequence[ExecuteMessage]) -> None:
    """Publish `jobs.execute` messages at once over one producer (callers are past their commit)."""
    if not messages:
        return
    app = current_app
    with app.producer_or_acquire() as producer:
        for message in messages:
            app.send_task(
                EXECUTE_TASK,
                kwargs={"execution_id": message.execution_id},
                queue=message.queue,
                priority=broker_priority(message.priority),
                # A backstop; the executor kills the run at its timeout first.
                time_limit=message.timeout_seconds + HARD_LIMIT_MARGIN_SECONDS,
                producer=producer,
            )


def execute_publish_on_commit(messages: Sequence[ExecuteMessage]) -> None:
    """Publish `jobs.execute` messages once the current transaction commits (a crash before is repaired
    by the reconciler, which republishes executions queued in the database but absent from the broker)."""
    if messages:
        batch = list(messages)
        transaction.on_commit(lambda: execute_publish_now(batch))


def dead_letter_notice_on_commit(notice: dict[str, Any]) -> None:
    """A notice on the `dead_letter` queue for whoever watches it, after commit."""
    transaction.on_commit(
        lambda: current_app.send_task("jobs.dead_letter", kwargs=notice, queue="dead_letter")
    )


# --- placement pass nudges --------------------------------------------------------------------


def pending_waiting_mark() -> None:
    """Remember (after commit) that executions wait as pending, so freed capacity asks for a pass."""
    transaction.on_commit(lambda: cache.set(PENDING_WAITING_KEY, 1, timeout=None))


def pending_waiting_clear() -> None:
    """A pass starts: clear the mark first; whatever it leaves pending marks it again."""
    cache.delete(PENDING_WAITING_KEY)


def _send_dispatch_pending() -> None:
    # Coalesced, never dropped: while a pass is queued and not started, later nudges ride on it (it will see
    # their changes); the pass clears the flag as it starts, so a nudge during or after it sends another.
    if cache.add(DISPATCH_QUEUED_KEY, 1, timeout=DISPATCH_QUEUED_TTL):
        current_app.send_task("jobs.dispatch_pending")


_waiting_seen = {"value": False, "until": 0.0}  # per process: the mark as read lately
WAITING_RECHECK_SECONDS = 0.5


def _nudge_if_waiting() -> None:
    # Read the mark at most twice a second per process: a release costs no Redis round trip, and pending
    # work waits at most that much longer (the sweep places it every SCHEDULER_SWEEP_SECONDS anyway).
    now = time.monotonic()
    if now >= _waiting_seen["until"]:
        _waiting_seen.update(value=bool(cache.get(PENDING_WAITING_KEY)), until=now + WAITING_RECHECK_SECONDS)
    if _waiting_seen["value"]:
        _send_dispatch_pending()


def place_soon(*, force: bool = False) -> None:
    """After commit, ask for a placement pass: always with `force` (a node came), else if work waits."""
    transaction.on_commit(_send_dispatch_pending if force else _nudge_if_waiting)


def dispatch_pass_started() -> None:
    """A placement pass starts: later nudges must send another pass."""
    cache.delete(DISPATCH_QUEUED_KEY)
