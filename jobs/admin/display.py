"""How the admin and the dashboard (monitoring) word an execution's end cause and what it used."""

from __future__ import annotations

from ..models import Execution

# In words, as people read them ("out of memory" for oom_killed): the choices' labels.
END_CAUSE_TEXT: dict[str, str] = dict(Execution.EndCause.choices)


def end_cause_text(cause: str) -> str:
    """The end cause in words ("out of memory" for oom_killed); "" when unset."""
    return END_CAUSE_TEXT.get(cause, cause)


def memory_text(peak_bytes: int | None, limit_mb: int | None = None) -> str:
    """Peak memory in MB (2**20 bytes, as memory_mb counts), with the job's limit if given; "" if unknown."""
    if peak_bytes is None:
        return ""
    text = f"{peak_bytes / 2**20:.1f} MB"
    return f"{text} of {limit_mb} MB" if limit_mb else text


def cpu_text(cpu_seconds: float | None) -> str:
    """CPU time in seconds ("1.23 s"); "" if unknown."""
    return "" if cpu_seconds is None else f"{cpu_seconds:.2f} s"
