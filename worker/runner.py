"""Worker side of an execution: claim it, run its executor under a database-backed control, finish it.

The cheap path of a short run that succeeds is two statements, each its own commit: the claim (one
conditional UPDATE that returns what the executor needs) and the finish (status, output and the capacity
released in one statement; a failure adds its retry or dead-letter row in the same transaction). Output
is streamed live as chunks only while a run lasts longer than the flush interval; a short run's output is
its execution row's tail, written by the finish.

A database that goes away never strands a run: a failed cancellation check or output store is logged and
the job goes on; the claim and the finish are retried on a fresh connection with backoff for up to
SCHEDULER_WORKER_DB_RETRY_SECONDS (the outcome is kept in memory meanwhile). A claim cut off after it
committed is recognised by its token, a finish by its fencing (it applies once). If the database stays
away longer, the task ends and the worker's liveness check marks the run lost once the database answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid

from django.conf import settings

from jobs.executors import Outcome, Resources, executor_for
from jobs.executors.base import clamp_progress
from jobs.executors.docker_engine import LABEL_NODE, LABEL_RUN_KEY
from jobs.services import (
    execution_capacity_release,
    execution_claim,
    execution_finish,
    execution_output_store,
    execution_progress_store,
    execution_stop_reason,
)
from monitoring.services import ExecutionLogWriter

from .dbretry import DB_UNAVAILABLE, best_effort, db_retry
from .identity import current_incarnation, current_node_name
from .processes import RUN_KEY_ENV, leftovers_kill, run_end, run_key, run_record

logger = logging.getLogger(__name__)
CHECK_SECONDS = 0.9  # cancellation checks, output and progress stores, at most this often


class ClaimControl:
    """A RunControl backed by the execution row: stops when its claim is no longer ours.

    Its database calls never end a run: one the database cannot answer is logged and tried again at the
    next check (a lost connection is not a reason to stop or abandon the job)."""

    def __init__(self, execution_id: int, claim_token: uuid.UUID) -> None:
        self.execution_id = execution_id
        self.claim_token = claim_token
        self._next_check = 0.0
        self._next_output = 0.0
        self._next_progress = 0.0
        self._progress: float | None = None  # the latest report not stored yet
        self._reason: str | None = None
        self.log = ExecutionLogWriter(execution_id=execution_id)
        self.log_feed = self.log.feed

    def stop_reason(self) -> str | None:
        now = time.monotonic()
        if self._reason is None and now >= self._next_check:
            self._next_check = now + CHECK_SECONDS
            self._reason = best_effort(
                f"execution {self.execution_id}: cancellation check",
                lambda: execution_stop_reason(execution_id=self.execution_id, claim_token=self.claim_token),
            )
        if self._progress is not None and now >= self._next_progress:
            self._store_progress(now)
        return self._reason

    def output_update(self, output: str, truncated: bool) -> None:
        best_effort(f"execution {self.execution_id}: live log", self.log.flush)
        now = time.monotonic()
        if now >= self._next_output:
            self._next_output = now + CHECK_SECONDS
            best_effort(
                f"execution {self.execution_id}: output store",
                lambda: execution_output_store(
                    execution_id=self.execution_id,
                    claim_token=self.claim_token,
                    output=output,
                    truncated=truncated,
                ),
            )

    def progress_update(self, value: float) -> None:
        # Rate-limited like output: a job reporting in a tight loop must not write a row per report.
        self._progress = clamp_progress(value)
        now = time.monotonic()
        if now >= self._next_progress:
            self._store_progress(now)

    def _store_progress(self, now: float) -> None:
        self._next_progress = now + CHECK_SECONDS
        value = self._progress
        if value is None:
            return
        stored = best_effort(
            f"execution {self.execution_id}: progress store",
            lambda: execution_progress_store(
                execution_id=self.execution_id, claim_token=self.claim_token, progress=value
            ),
        )
        if stored is not None and self._progress == value:
            self._progress = None  # kept for the next try when the database did not answer

    def progress_flush(self) -> None:
        """Store the last progress report that the rate limit held back."""
        if self._progress is not None:
            self._store_progress(time.monotonic())

    # What the executor tells about the processes it starts (see worker.processes).
    def process_env(self) -> dict[str, str]:
        return {RUN_KEY_ENV: run_key(self.claim_token)}

    def process_started(self, pid: int) -> None:
        run_record(self.claim_token, pid)

    def process_ended(self) -> None:
        run_end(self.claim_token)

    def container_labels(self) -> dict[str, str]:
        """Labels of the containers the run starts: the worker's janitor finds them by these."""
        return {LABEL_NODE: current_node_name() or "", LABEL_RUN_KEY: run_key(self.claim_token)}


def execution_run(*, execution_id: int) -> str | None:
    """Claim, run and finish one execution on this worker; returns its outcome status (None: not ours)."""
    node_name = current_node_name()
    if not node_name:
        logger.error("execution %s: this worker has no registered node; not claimed", execution_id)
        return None
    token = uuid.uuid4()
    claim = db_retry(
        f"execution {execution_id}: claim",
        lambda: execution_claim(
            execution_id=execution_id,
            node_name=node_name,
            pid=os.getpid(),
            incarnation=current_incarnation(),
            token=token,
            leftovers_gone=leftovers_kill,
        ),
    )
    if claim is None:
        return None
    control = ClaimControl(execution_id, claim.claim_token)
    try:
        outcome = executor_for(claim.kind).run(
            claim.payload,
            timeout=claim.timeout_seconds,
            control=control,
            execution_id=execution_id,
            resources=Resources(cpu=float(claim.cpu or 0), memory_mb=int(claim.memory_mb or 0)),
        )
    except Exception as exc:  # an executor bug must still end the run, never leave it "running"
        logger.exception("execution %s: executor %s crashed", execution_id, claim.kind)
        outcome = Outcome(status="failed", error=f"executor error: {type(exc).__name__}: {exc}"[:2000])
    control.progress_flush()
    best_effort(f"execution {execution_id}: live log", lambda: control.log.flush_final(tail=outcome.output))
    try:
        db_retry(
            f"execution {execution_id}: recording {outcome.status}",
            lambda: execution_finish(
                execution_id=execution_id,
                claim_token=claim.claim_token,
                outcome=outcome,
                retries_left=claim.retries_left,
            ),
        )
    except DB_UNAVAILABLE:
        logger.error(
            "execution %s: the database stayed away for %gs; its outcome (%s) is not recorded, the run will"
            " be marked lost and retried once the database answers",
            execution_id, settings.SCHEDULER_WORKER_DB_RETRY_SECONDS, outcome.status,
        )  # fmt: skip
        return None
    except Exception:
        # Not the connection: a failed finish must not keep the capacity of a run that is over.
        with contextlib.suppress(Exception):
            execution_capacity_release(execution_id=execution_id)
        raise
    logger.info("execution %s of job %s: %s", execution_id, claim.job_id, outcome.status)
    return outcome.status
