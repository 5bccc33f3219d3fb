"""Reads of execution output: follow one execution by offset, search output across executions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Exists, OuterRef, Q, QuerySet

from jobs.models import Execution
from monitoring.models import ExecutionLogChunk

READ_LIMIT_CHARS = 256 * 1024  # one read returns at most this much; the caller continues at next_offset


@dataclass(frozen=True)
class LogSlice:
    """Output from `offset` on; `complete` once the execution ended and nothing more will come."""

    text: str
    next_offset: int
    complete: bool
    status: str


def _from_output(execution: Execution, offset: int) -> tuple[str, int]:
    # No chunks (output not streamed, or pruned to the row's tail): Execution.output is the whole text.
    text = (execution.output or "")[offset : offset + READ_LIMIT_CHARS]
    return text, offset + len(text)


def _from_chunks(execution_id: int, offset: int) -> tuple[str, int] | None:
    chunks = ExecutionLogChunk.objects.filter(execution_id=execution_id)
    first = chunks.order_by("seq").values("offset").first()
    if first is None:
        return None
    parts: list[str] = []
    if offset < first["offset"]:
        # The oldest output was dropped (SCHEDULER_LOG_MAX_CHARS): say so where the reader will see it.
        parts.append(f"[{first['offset'] - offset} characters of older output dropped]\n")
        offset = first["offset"]
    position, size = offset, 0
    rows = chunks.filter(offset__gte=offset - READ_LIMIT_CHARS).order_by("seq").values("offset", "text")
    for row in rows.iterator():
        end = row["offset"] + len(row["text"])
        if end <= position:
            continue
        piece = row["text"][position - row["offset"] :]
        piece = piece[: READ_LIMIT_CHARS - size]
        parts.append(piece)
        position += len(piece)
        size += len(piece)
        if size >= READ_LIMIT_CHARS:
            break
    return "".join(parts), position


def log_read(*, execution_id: int, offset: int = 0) -> LogSlice:
    """Output of an execution from `offset` (characters); raises Execution.DoesNotExist for a missing id."""
    if offset < 0:
        raise ValueError("offset must be 0 or more")
    # Read the status first: output stored before a terminal status is then complete when we read it.
    execution = Execution.objects.only("status", "output").get(pk=execution_id)
    finished = execution.status in Execution.TERMINAL
    found = _from_chunks(execution_id, offset)
    if found is None:
        text, next_offset = _from_output(execution, offset)
        total = len(execution.output or "")
    else:
        text, next_offset = found
        last = ExecutionLogChunk.objects.filter(execution_id=execution_id).order_by("-seq").first()
        total = last.end if last else next_offset
    return LogSlice(
        text=text,
        next_offset=next_offset,
        complete=finished and next_offset >= total,
        status=execution.status,
    )


def logs_query(
    *,
    executions: QuerySet[Execution],
    job_id: int | None = None,
    node: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    contains: str | None = None,
) -> QuerySet[Execution]:
    """Executions (already scoped to the caller) filtered by job, node name, status, time and output text."""
    qs = executions
    if job_id is not None:
        qs = qs.filter(job_id=job_id)
    if node:
        qs = qs.filter(node__name=node)
    if status:
        qs = qs.filter(status=status)
    if since:
        qs = qs.filter(created_at__gte=since)
    if until:
        qs = qs.filter(created_at__lt=until)
    if contains:
        in_chunks = ExecutionLogChunk.objects.filter(execution=OuterRef("pk"), text__icontains=contains)
        qs = qs.filter(Q(output__icontains=contains) | Q(error__icontains=contains) | Exists(in_chunks))
    return qs.select_related("job", "node").order_by("-created_at", "-pk")


def log_excerpt(execution: Execution, contains: str | None, width: int = 300) -> str:
    """A short piece of the output: around the first match of `contains`, else its end."""
    text = execution.output or ""
    if contains:
        index = text.lower().find(contains.lower())
        if index >= 0:
            start = max(0, index - width // 2)
            return text[start : start + width]
    return text[-width:]
