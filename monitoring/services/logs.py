"""Execution output capture (append-only chunks, bounded per execution) and retention pruning."""

from __future__ import annotations

import codecs
import logging
import threading
import time
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, OuterRef, Subquery, Sum
from django.db.models.functions import Length

from jobs.models import Execution
from monitoring.models import ExecutionLogChunk

logger = logging.getLogger(__name__)
APPEND_ATTEMPTS = 5  # racing appenders to one execution retry on the (execution, seq) unique constraint


def _log_end(execution_id: int) -> tuple[int, int, datetime] | None:
    """(next seq, end offset, the execution's slot) of an execution's log, in one query; None if the
    execution does not exist. The slot is the chunks' partition key."""
    last = ExecutionLogChunk.objects.filter(execution_id=OuterRef("pk")).order_by("-seq")
    row = (
        Execution.objects.filter(pk=execution_id)
        .annotate(
            last_seq=Subquery(last.values("seq")[:1]),
            last_end=Subquery(last.annotate(chunk_end=F("offset") + Length("text")).values("chunk_end")[:1]),
        )
        .values("last_seq", "last_end", "scheduled_for")
        .first()
    )
    if row is None:
        return None
    if row["last_seq"] is None:
        return 0, 0, row["scheduled_for"]
    return row["last_seq"] + 1, row["last_end"], row["scheduled_for"]


def _insert(execution_id: int, seq: int, offset: int, slot: datetime, text: str) -> ExecutionLogChunk:
    fields = {"execution_id": execution_id, "seq": seq, "offset": offset, "scheduled_for": slot, "text": text}
    if transaction.get_connection().in_atomic_block:
        with transaction.atomic():  # a savepoint: a lost seq race must not break the caller's transaction
            return ExecutionLogChunk.objects.create(**fields)
    # Autocommit: the INSERT is a transaction of its own (no BEGIN/COMMIT round trips).
    return ExecutionLogChunk.objects.create(**fields)


def _trim(execution_id: int) -> int:
    """Drop the oldest chunks past SCHEDULER_LOG_MAX_CHARS (offsets stay absolute, so readers notice)."""
    limit = int(settings.SCHEDULER_LOG_MAX_CHARS)
    chunks = ExecutionLogChunk.objects.filter(execution_id=execution_id)
    total = chunks.aggregate(n=Sum(Length("text")))["n"] or 0
    if total <= limit:
        return 0
    drop: list[int] = []
    for pk, size in chunks.order_by("seq").annotate(size=Length("text")).values_list("pk", "size"):
        if total <= limit:
            break
        drop.append(pk)
        total -= size
    # Always keep the newest chunk: it carries the end offset that appenders continue from.
    newest = chunks.order_by("-seq").values_list("pk", flat=True).first()
    drop = [pk for pk in drop if pk != newest]
    return ExecutionLogChunk.objects.filter(pk__in=drop).delete()[0]


def log_append(*, execution_id: int, text: str) -> ExecutionLogChunk | None:
    """Append output of a running execution; the new chunk (None for empty text or a missing execution)."""
    if not text:
        return None
    for _ in range(APPEND_ATTEMPTS):
        end = _log_end(execution_id)
        if end is None:
            logger.info("log_append: execution %s does not exist; output dropped", execution_id)
            return None
        try:
            chunk = _insert(execution_id, *end, text)
        except IntegrityError:
            continue  # another appender took this seq (or the execution just went): read again
        # What is stored never exceeds the end offset: below the limit there is nothing to trim.
        if chunk.end > int(settings.SCHEDULER_LOG_MAX_CHARS):
            _trim(execution_id)
        return chunk
    raise RuntimeError(f"log_append: execution {execution_id}: too many concurrent appenders")


class ExecutionLogWriter:
    """Buffers raw output bytes from any thread; flush() stores them with log_append (rate-limited)."""

    def __init__(self, *, execution_id: int, min_interval: float = 0.5) -> None:
        self.execution_id = execution_id
        self.min_interval = min_interval
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer: list[str] = []
        self._lock = threading.Lock()
        self._last_flush = 0.0
        self._stored = False  # a chunk was stored for this run

    def feed(self, data: bytes) -> None:
        """Take bytes as the job writes them (cheap; called from the output pump thread)."""
        with self._lock:
            self._buffer.append(self._decoder.decode(data))

    def flush(self, *, final: bool = False) -> ExecutionLogChunk | None:
        """Store what was fed since the last flush; at most once per min_interval unless final."""
        now = time.monotonic()
        if not final and now - self._last_flush < self.min_interval:
            return None
        with self._lock:
            if final:
                self._buffer.append(self._decoder.decode(b"", final=True))
            text, self._buffer = "".join(self._buffer), []
        self._last_flush = now
        return self._append(text)

    def flush_final(self, *, tail: str) -> ExecutionLogChunk | None:
        """The run ended: store what is left; none of it when the run never streamed and its whole output
        is the tail written on its execution row (that row's output is then its log)."""
        with self._lock:
            self._buffer.append(self._decoder.decode(b"", final=True))
            text, self._buffer = "".join(self._buffer), []
        if not self._stored and text == tail:
            return None
        return self._append(text)

    def _append(self, text: str) -> ExecutionLogChunk | None:
        try:
            chunk = log_append(execution_id=self.execution_id, text=text)
        except DatabaseError:
            with self._lock:  # not lost: stored with the next flush (a database blip, say)
                self._buffer.insert(0, text)
            raise
        self._stored = self._stored or chunk is not None
        return chunk
