"""What every executor shares: the outcome it reports, the control it polls, a bounded output tail."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.conf import settings


@dataclass
class Outcome:
    """How one run ended, as the executor saw it."""

    status: str  # an Execution.Status value: succeeded, failed, timed_out or cancelled
    exit_code: int | None = None
    output: str = ""
    output_truncated: bool = False
    error: str = ""
    result: Any = None
    cause: str = ""  # an Execution.EndCause value: why it ended ("" when the executor does not say)
    memory_peak_bytes: int | None = None  # what the run used, when its executor could measure it
    cpu_seconds: float | None = None


@dataclass(frozen=True)
class Resources:
    """What placement reserved for the run: the job's cpu and memory_mb (0: not limited)."""

    cpu: float = 0.0
    memory_mb: int = 0


class RunControl(Protocol):
    """The worker side of a running execution: cancellation, live output and progress."""

    def stop_reason(self) -> str | None:
        """Return why the run must stop now ("cancelled"), or None; cheap to call often."""

    def output_update(self, output: str, truncated: bool) -> None:
        """Store the output tail so far (rate-limited by the implementation)."""

    def progress_update(self, value: float) -> None:
        """Store a progress report (0..100)."""

    # Optional (a worker's control has them; getattr with a default elsewhere): process_env() for the
    # variables marking a run's processes, process_started(pid) / process_ended(), container_labels()
    # for the labels marking its containers, log_feed(bytes) for the live log.


@dataclass
class LocalControl:
    """A RunControl kept in memory: for running an executor outside a worker (tests, dry runs)."""

    cancelled: threading.Event = field(default_factory=threading.Event)
    outputs: list[str] = field(default_factory=list)
    progress: list[float] = field(default_factory=list)

    def stop_reason(self) -> str | None:
        return "cancelled" if self.cancelled.is_set() else None

    def output_update(self, output: str, truncated: bool) -> None:
        self.outputs.append(output)

    def progress_update(self, value: float) -> None:
        self.progress.append(value)


class OutputTail:
    """Keeps the last `limit` bytes written to it; thread-safe; knows whether it dropped any."""

    def __init__(self, limit: int | None = None, kept: str = "last", sink: Any = None) -> None:
        self.sink = sink  # also receives every write, e.g. the live log (RunControl.log_feed)
        self.limit = limit if limit is not None else settings.SCHEDULER_OUTPUT_LIMIT_BYTES
        self.kept = kept
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.truncated = False
        self.version = 0  # bumps on every write, so callers can tell when to store again

    def write(self, data: bytes) -> None:
        with self._lock:
            self._buf += data
            if len(self._buf) > self.limit:
                del self._buf[: len(self._buf) - self.limit]
                self.truncated = True
            self.version += 1
        if self.sink is not None:
            self.sink(data)

    def text(self) -> str:
        with self._lock:
            body = bytes(self._buf).decode("utf-8", errors="replace")
            truncated = self.truncated
        if truncated:
            # Say so in the text itself, where a person reading the output will see it.
            return f"[output truncated: showing the {self.kept} {self.limit} bytes]\n{body}"
        return body


def payload_envelope_errors(payload: Any, keys: set[str], shape: str) -> dict[str, str]:
    """Envelope errors of a payload: not an object, or unknown keys (the fields are still checked)."""
    if not isinstance(payload, dict):
        return {"payload": f"must be an object with {shape}"}
    unknown = set(payload) - keys
    return {"payload": f"unknown keys: {', '.join(sorted(unknown))}"} if unknown else {}


def clamp_progress(value: float) -> float:
    """Keep a reported progress inside 0..100."""
    return max(0.0, min(100.0, float(value)))
