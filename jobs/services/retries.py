"""Retry policy and the records of a failed attempt's fate: a JobRetry (attempts left) or a DeadLetter.

The status of the failed execution is written by the execution state module (executions.py), which calls
`failure_records_create` in the same transaction; the retry sweep and replay live with firing.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from django.utils import timezone

from scheduler_project.db import sql_execute

from .. import messages
from ..models import DeadLetter, Job, JobRetry

logger = logging.getLogger(__name__)
JITTER_LOW = 0.8  # jitter scales a delay by [0.8, 1.0): below the cap, and each retry still waits longer


class RetryPolicy(Protocol):
    """A job, or a failed attempt carrying its job's policy."""

    @property
    def retry_backoff_seconds(self) -> int: ...

    @property
    def retry_backoff_max_seconds(self) -> int: ...

    @property
    def retry_jitter(self) -> bool: ...


def retry_delay_seconds(*, job: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Backoff before the attempt after `attempt`: base * 2^(attempt-1), capped, with jitter if set."""
    exponent = max(0, attempt - 1)
    base = float(job.retry_backoff_seconds)
    delay = min(base * (2 ** min(exponent, 32)), float(job.retry_backoff_max_seconds))
    if job.retry_jitter:
        delay *= (rng or random).uniform(JITTER_LOW, 1.0)  # noqa: S311 - jitter, not cryptography
    return delay


@dataclass(frozen=True)
class FailedAttempt:
    """A failed, timed-out or lost attempt, with its job's retry policy as the transition read it."""

    execution_id: int
    job_id: int
    attempt: int
    status: str
    error: str
    max_retries: int
    retry_backoff_seconds: int
    retry_backoff_max_seconds: int
    retry_jitter: bool

    @property
    def retries_left(self) -> bool:
        return self.attempt <= self.max_retries


def failure_records_create(*, attempts: Sequence[FailedAttempt], now: datetime | None = None) -> None:
    """A JobRetry (retry_at = backoff with jitter, capped) for each attempt with retries left, else a
    DeadLetter and a notice on the `dead_letter` queue after commit. Idempotent per execution."""
    now = now or timezone.now()
    retry = [a for a in attempts if a.status != "dead" and a.retries_left]
    JobRetry.objects.bulk_create(
        [
            JobRetry(
                job_id=a.job_id,
                failed_execution_id=a.execution_id,
                next_attempt=a.attempt + 1,
                retry_at=now + timedelta(seconds=retry_delay_seconds(job=a, attempt=a.attempt)),
            )
            for a in retry
        ],
        ignore_conflicts=True,
    )
    dead = [a for a in attempts if a not in retry]
    created = _dead_letters_insert(dead)
    for a in dead:
        if a.execution_id not in created:
            continue
        dead_letter_id, error = created.pop(a.execution_id)  # pop: an attempt listed twice notifies once
        messages.dead_letter_notice_on_commit(
            {
                "dead_letter_id": dead_letter_id,
                "execution_id": a.execution_id,
                "job_id": a.job_id,
                "error": error[:1000],
            }
        )
        logger.warning(
            "execution %s of job %s is dead after %d attempt(s)", a.execution_id, a.job_id, a.attempt
        )


# One statement for a whole reaper pass; a dead letter that exists already (a repeated decision) is kept.
_DEAD_LETTERS_INSERT = """
INSERT INTO jobs_deadletter (job_id, execution_id, error, status, replay_count, last_replayed_at, created_at)
SELECT v.job_id, v.execution_id, v.error, %s, 0, NULL, %s
FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS v(execution_id, job_id, error)
ON CONFLICT (execution_id) DO NOTHING
RETURNING id, execution_id, error
"""


def _dead_letters_insert(attempts: Sequence[FailedAttempt]) -> dict[int, tuple[int, str]]:
    """Insert the attempts' dead letters where none exists; execution id -> (dead letter id, error) of the
    ones created."""
    if not attempts:
        return {}
    rows = sql_execute(
        _DEAD_LETTERS_INSERT,
        [
            DeadLetter.Status.OPEN,
            timezone.now(),  # as auto_now_add: when the letter was written, not the decision's `now`
            [a.execution_id for a in attempts],
            [a.job_id for a in attempts],
            [a.error or a.status for a in attempts],
        ],
    )
    return {execution_id: (pk, error) for pk, execution_id, error in rows}


def job_retries_cancel(*, job: Job) -> int:
    """Cancel the job's waiting retries (pause, archive)."""
    return JobRetry.objects.filter(job=job, status=JobRetry.Status.WAITING).update(
        status=JobRetry.Status.CANCELLED
    )


def dead_letter_discard(*, dead_letter_id: int) -> bool:
    """Mark an open dead letter as looked at and dropped."""
    return bool(
        DeadLetter.objects.filter(pk=dead_letter_id, status=DeadLetter.Status.OPEN).update(
            status=DeadLetter.Status.DISCARDED
        )
    )
