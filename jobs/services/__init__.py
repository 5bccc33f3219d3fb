"""Writes of the jobs app: plain keyword-only functions, atomic, every status change conditional."""

from .executions import (
    execution_cancel,
    execution_claim,
    execution_finish,
    execution_mark_lost,
    execution_output_store,
    execution_progress_store,
    execution_requeue,
    execution_stop_reason,
    executions_overdue_sweep,
)
from .jobs import (
    job_create,
    job_delete,
    job_pause,
    job_resume,
    job_trigger,
    job_update,
    shell_permission_check,
)
from .retries import (
    dead_letter_discard,
    dead_letter_replay,
    execution_failure_handle,
    retries_sweep,
    retry_delay_seconds,
)

__all__ = [
    "dead_letter_discard",
    "dead_letter_replay",
    "execution_cancel",
    "execution_claim",
    "execution_failure_handle",
    "execution_finish",
    "execution_mark_lost",
    "execution_output_store",
    "execution_progress_store",
    "execution_requeue",
    "execution_stop_reason",
    "executions_overdue_sweep",
    "job_create",
    "job_delete",
    "job_pause",
    "job_resume",
    "job_trigger",
    "job_update",
    "retries_sweep",
    "retry_delay_seconds",
    "shell_permission_check",
]
