"""Worker side of an execution: claim it, run its executor under a database-backed control, finish it.

The cheap path of a short run that succeeds is two statements, each its own commit: the claim (one
conditional UPDATE that returns what the executor needs) and the finish (status, output and the capacity
released in one statement; a failure adds its retry or dead-letter row in the same transaction). Output
is streamed live as chunks only while a run lasts longer than the flush interval; a short run's output is
its execution row's tail, written by the finish.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

from jobs.executors import Outcome, executor_for
from jobs.executors.base import clamp_progress
from jobs.services import (
    execution_capacity_release,
    execution_claim,
    execution_finish,
    execution_output_store,
    execution_progress_store,
    execution_stop_reason,
)
from monitoring.services import ExecutionLogWriter

from .identity import current_node_name

logger = logging.getLogger(__name__)
CHECK_SECONDS = 0.9  # cancellation checks, output and progress stores, at most this often


class ClaimControl:
    """A RunControl backed by the execution row: stops when its claim is no longer ours."""

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
            self._reason = execution_stop_reason(execution_id=self.execution_id, claim_token=self.claim_token)
        if self._progress is not None and now >= self._next_progress:
            self._store_progress(now)
        return self._reason

    def output_update(self, output: str, truncated: bool) -> None:
        self.log.flush()
        now = time.monotonic()
        if now >= self._next_output:
            self._next_output = now + CHECK_SECONDS
            execution_output_store(
                execution_id=self.execution_id,
                claim_token=self.claim_token,
                output=output,
                truncated=truncated,
            )

    def progress_update(self, value: float) -> None:
        # Rate-limited like output: a job reporting in a tight loop must not write a row per report.
        self._progress = clamp_progress(value)
        now = time.monotonic()
        if now >= self._next_progress:
            self._store_progress(now)

    def _store_progress(self, now: float) -> None:
        self._next_progress = now + CHECK_SECONDS
        value, self._progress = self._progress, None
        if value is not None:
            execution_progress_store(
                execution_id=self.execution_id, claim_token=self.claim_token, progress=value
            )

    def progress_flush(self) -> None:
        """Store the last progress report that the rate limit held back."""
        if self._progress is not None:
            self._store_progress(time.monotonic())


def execution_run(*, execution_id: int) -> str | None:
    """Claim, run and finish one execution on this worker; returns its outcome status (None: not ours)."""
    node_name = current_node_name()
    if not node_name:
        logger.error("execution %s: this worker has no registered node; not claimed", execution_id)
        return None
    claim = execution_claim(execution_id=execution_id, node_name=node_name, pid=os.getpid())
    if claim is None:
        return None
    control = ClaimControl(execution_id, claim.claim_token)
    try:
        outcome = executor_for(claim.kind).run(
            claim.payload, timeout=claim.timeout_seconds, control=control, execution_id=execution_id
        )
    except Exception as exc:  # an executor bug must still end the run, never leave it "running"
        logger.exception("execution %s: executor %s crashed", execution_id, claim.kind)
        outcome = Outcome(status="failed", error=f"executor error: {type(exc).__name__}: {exc}"[:2000])
    finished = False
    try:
        control.progress_flush()
        control.log.flush_final(tail=outcome.output)  # nothing for a short run: its tail is its log
        finished = execution_finish(
            execution_id=execution_id,
            claim_token=claim.claim_token,
            outcome=outcome,
            retries_left=claim.retries_left,
        )
    finally:
        if not finished:
            # A failed finish (database error) must not keep the capacity of a run that is over.
            execution_capacity_release(execution_id=execution_id)
    logger.info("execution %s of job %s: %s", execution_id, claim.job_id, outcome.status)
    return outcome.status
