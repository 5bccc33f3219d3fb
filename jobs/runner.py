"""Worker side of an execution: claim it, run its executor under a database-backed control, finish it."""

from __future__ import annotations

import logging
import time
import uuid

from monitoring.services import ExecutionLogWriter

from .executors import Outcome, executor_for
from .executors.base import clamp_progress
from .services import (
    execution_claim,
    execution_finish,
    execution_output_store,
    execution_progress_store,
    execution_stop_reason,
)

logger = logging.getLogger(__name__)
CHECK_SECONDS = 0.9  # cancellation checks and output stores, at most this often


class ClaimControl:
    """A RunControl backed by the execution row: stops when its claim is no longer ours."""

    def __init__(self, execution_id: int, claim_token: uuid.UUID) -> None:
        self.execution_id = execution_id
        self.claim_token = claim_token
        self._next_check = 0.0
        self._next_output = 0.0
        self._reason: str | None = None
        self.log = ExecutionLogWriter(execution_id=execution_id)
        self.log_feed = self.log.feed

    def stop_reason(self) -> str | None:
        now = time.monotonic()
        if self._reason is None and now >= self._next_check:
            self._next_check = now + CHECK_SECONDS
            self._reason = execution_stop_reason(execution_id=self.execution_id, claim_token=self.claim_token)
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
        execution_progress_store(
            execution_id=self.execution_id, claim_token=self.claim_token, progress=clamp_progress(value)
        )


def execution_run(*, execution_id: int) -> str | None:
    """Claim, run and finish one execution on this worker; returns its outcome status (None: not ours)."""
    from nodes.services import allocation_release  # nodes imports jobs: import at call time

    execution = execution_claim(execution_id=execution_id)
    if execution is None:
        return None
    job = execution.job
    assert execution.claim_token is not None  # noqa: S101 - set by the claim
    control = ClaimControl(execution_id, execution.claim_token)
    try:
        outcome = executor_for(job.kind).run(
            job.payload, timeout=job.timeout_seconds, control=control, execution_id=execution_id
        )
    except Exception as exc:  # an executor bug must still end the run, never leave it "running"
        logger.exception("execution %s: executor %s crashed", execution_id, job.kind)
        outcome = Outcome(status="failed", error=f"executor error: {type(exc).__name__}: {exc}"[:2000])
    finished = False
    try:
        control.log.flush(final=True)
        finished = execution_finish(
            execution_id=execution_id, claim_token=execution.claim_token, outcome=outcome
        )
    finally:
        if not finished:
            # A won finish released in its own transaction; a lost claim (cancelled while running)
            # or a failed finish still holds the capacity: free it here.
            allocation_release(execution_id=execution_id)
    logger.info("execution %s of job %s: %s", execution_id, job.pk, outcome.status)
    return outcome.status
