"""Retry policy, the retry sweep, dead letters and their replay."""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

from celery import current_app
from django.db import IntegrityError, transaction
from django.utils import timezone

from ..models import DeadLetter, Execution, Job, JobRetry

logger = logging.getLogger(__name__)
JITTER_LOW = 0.8  # jitter scales a delay by [0.8, 1.0): below the cap, and each retry still waits longer


def retry_delay_seconds(*, job: Job, attempt: int, rng: random.Random | None = None) -> float:
    """Backoff before the attempt after `attempt`: base * 2^(attempt-1), capped, with jitter if set."""
    exponent = max(0, attempt - 1)
    base = float(job.retry_backoff_seconds)
    delay = min(base * (2 ** min(exponent, 32)), float(job.retry_backoff_max_seconds))
    if job.retry_jitter:
        delay *= (rng or random).uniform(JITTER_LOW, 1.0)  # noqa: S311 - jitter, not cryptography
    return delay


def _publish_dead_letter(dead_letter: DeadLetter) -> None:
    current_app.send_task(
        "jobs.dead_letter",
        kwargs={
            "dead_letter_id": dead_letter.pk,
            "execution_id": dead_letter.execution_id,
            "job_id": dead_letter.job_id,
            "error": dead_letter.error[:1000],
        },
        queue="dead_letter",
    )


def execution_failure_handle(*, execution: Execution, now: datetime | None = None) -> JobRetry | DeadLetter:
    """After a failed / timed-out / lost attempt: a JobRetry if attempts remain, else a DeadLetter."""
    now = now or timezone.now()
    job = execution.job
    if execution.attempt <= job.max_retries:
        delay = retry_delay_seconds(job=job, attempt=execution.attempt)
        retry, _ = JobRetry.objects.get_or_create(
            failed_execution=execution,
            defaults={
                "job": job,
                "next_attempt": execution.attempt + 1,
                "retry_at": now + timedelta(seconds=delay),
            },
        )
        # A plain failure reads "retrying"; timed_out and lost keep saying what happened.
        Execution.objects.filter(pk=execution.pk, status=Execution.Status.FAILED).update(
            status=Execution.Status.RETRYING
        )
        return retry
    dead, created = DeadLetter.objects.get_or_create(
        execution=execution, defaults={"job": job, "error": execution.error or execution.status}
    )
    Execution.objects.filter(pk=execution.pk, status=Execution.Status.FAILED).update(
        status=Execution.Status.DEAD
    )
    if created:
        transaction.on_commit(lambda: _publish_dead_letter(dead))
        logger.warning(
            "execution %s of job %s is dead after %d attempt(s)", execution.pk, job.pk, execution.attempt
        )
    return dead


def retries_sweep(*, limit: int = 100, now: datetime | None = None) -> int:
    """Start the next attempt of every due JobRetry (same slot, attempt + 1); returns how many started."""
    now = now or timezone.now()
    started = 0
    while started < limit:
        with transaction.atomic():
            retry = (
                JobRetry.objects.select_for_update(skip_locked=True)
                .select_related("job", "failed_execution")
                .filter(status=JobRetry.Status.WAITING, retry_at__lte=now)
                .order_by("retry_at")
                .first()
            )
            if retry is None:
                break
            started += _retry_start(retry)
    return started


def _retry_start(retry: JobRetry) -> int:
    from ..dispatch import execution_dispatch

    if retry.job.status not in (Job.Status.ACTIVE, Job.Status.COMPLETED):
        JobRetry.objects.filter(pk=retry.pk).update(status=JobRetry.Status.CANCELLED)
        return 0
    failed = retry.failed_execution
    try:
        with transaction.atomic():
            execution = Execution.objects.create(
                job=retry.job,
                scheduled_for=failed.scheduled_for,
                attempt=retry.next_attempt,
                trigger=Execution.Trigger.RETRY,
                retry_of=failed,
            )
    except IntegrityError:
        execution = Execution.objects.get(
            job=retry.job, scheduled_for=failed.scheduled_for, attempt=retry.next_attempt
        )
    JobRetry.objects.filter(pk=retry.pk).update(status=JobRetry.Status.ENQUEUED, new_execution=execution)
    execution_dispatch(execution_id=execution.pk)
    return 1


def job_retries_cancel(*, job: Job) -> int:
    """Cancel the job's waiting retries (pause, archive)."""
    return JobRetry.objects.filter(job=job, status=JobRetry.Status.WAITING).update(
        status=JobRetry.Status.CANCELLED
    )


@transaction.atomic
def dead_letter_replay(*, dead_letter_id: int) -> Execution:
    """Run a dead execution again: a fresh execution (slot = now, trigger replay) linked to the dead one."""
    from django.core.exceptions import ValidationError

    from ..dispatch import execution_dispatch

    dead = (
        DeadLetter.objects.select_for_update()
        .select_related("job", "execution")
        .filter(pk=dead_letter_id)
        .first()
    )
    if dead is None:
        raise ValidationError({"dead_letter": f"dead letter {dead_letter_id} does not exist"})
    if dead.job.status == Job.Status.ARCHIVED:
        raise ValidationError({"dead_letter": f"job {dead.job_id} is archived; it cannot be replayed"})
    now = timezone.now()
    execution = Execution.objects.create(
        job=dead.job,
        scheduled_for=now,
        attempt=1,
        trigger=Execution.Trigger.REPLAY,
        replay_of=dead.execution,
    )
    DeadLetter.objects.filter(pk=dead.pk).update(
        status=DeadLetter.Status.REPLAYED, replay_count=dead.replay_count + 1, last_replayed_at=now
    )
    execution_dispatch(execution_id=execution.pk)
    execution.refresh_from_db()
    return execution


def dead_letter_discard(*, dead_letter_id: int) -> bool:
    """Mark an open dead letter as looked at and dropped."""
    return bool(
        DeadLetter.objects.filter(pk=dead_letter_id, status=DeadLetter.Status.OPEN).update(
            status=DeadLetter.Status.DISCARDED
        )
    )
